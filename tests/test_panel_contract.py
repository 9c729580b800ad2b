"""The panel forecaster's ONNX contract (``rnnops.panel``): it round-trips, derives the graph's
inputs from the roles, and refuses malformed metadata in one line naming the field."""

from __future__ import annotations

import re

import pytest

from rnnops.contract import MetadataError, check_metadata
from rnnops.panel_contract import (
    KNOWN_FUTURE,
    PAST_COVARIATES,
    PAST_TARGET,
    STATIC_CAT,
    PanelContract,
    StaticCategorical,
    panel_contract,
)


def retail() -> PanelContract:
    return PanelContract(
        target="sales",
        freq="D",
        season=7,
        lookback=28,
        horizon=7,
        quantiles=(0.1, 0.5, 0.9),
        future_covariates=("promo", "price"),
        calendar=("day_of_week", "day_of_month"),
        static_categorical=(StaticCategorical("store", ("north", "south")),),
        static_real=("size",),
    )


def test_the_contract_round_trips_through_json_and_derives_the_graph_inputs():
    c = retail()
    assert PanelContract.from_json(c.to_json()) == c
    assert c.known_names == ("promo", "price", "day_of_week", "day_of_month")
    assert c.inputs[PAST_TARGET] == (("batch", 28), "float32")
    assert c.inputs[KNOWN_FUTURE] == (("batch", 7, 4), "float32")
    assert c.inputs[STATIC_CAT] == (("batch", 1), "int64")
    assert PAST_COVARIATES not in c.inputs  # a role with no columns has no graph input
    assert c.median_index() == 1


def test_a_category_never_seen_goes_to_the_unknown_bucket():
    store = retail().static_categorical[0]
    assert [store.code(v) for v in ("north", "south", "east")] == [1, 2, 0]


@pytest.mark.parametrize(
    "change, field",
    [
        ({"lookback": 0}, "lookback"),
        ({"quantiles": [0.9, 0.1]}, "quantiles"),
        ({"quantiles": [0.5, 1.0]}, "quantiles"),
        ({"target": "a\nb"}, "target"),
        ({"static_real": ["promo"]}, "two roles"),
        ({"static_categorical": [{"name": "store", "vocabulary": ["x\x00"]}]}, "vocabulary[0]"),
        ({"min_history": 99}, "min_history"),
    ],
)
def test_malformed_panel_metadata_is_refused_in_one_line_naming_the_field(change, field):
    entry = {**retail().to_json(), **change}
    with pytest.raises(MetadataError, match=re.escape(field)) as err:
        check_metadata({"kind": "panel", "panel": entry})
    assert "\n" not in str(err.value)


def test_a_panel_kind_without_its_entry_is_refused_and_other_kinds_have_no_contract():
    with pytest.raises(MetadataError, match="no rnnops.panel"):
        panel_contract({"kind": "panel"})
    assert panel_contract({"kind": "forecaster"}) is None
