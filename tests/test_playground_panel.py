"""The playground's Forecast view for a panel model, in a real headless Chromium against one real
``bentoml serve`` of the exporter's tiny panel model (tests/panel_fixtures.py: past covariate
``price``, future covariate ``promo`` (0/1), statics ``store`` and ``size``), whose file embeds the
sample ``rnnops export`` writes (export/sample.py ``panel_sample``): the page lists the sample's
series, plots one's history, forecast, band and covariates with its promotion days marked, gives
the numbers the server gives for that series, and plays it as a session named by the series id
whose last answer is that same forecast. One series id is hostile markup: it shows as text. A
panel file without a sample (tests/assets/panel-retail.onnx) gets the server's one-line reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

from panel_fixtures import HORIZON, export_tiny_panel, tiny_panel, tiny_panel_model  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
from servers import serve_bentoml  # noqa: E402
from test_playground import CHROMEDRIVER, CHROMIUM, _by, _severe, _wait, browser, shots  # noqa: E402, F401

pytestmark = pytest.mark.slow
HOSTILE = '<img src=x onerror="window.__pwned=1">item'


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from rnnops.export import sample
    from rnnops.export.panel_export import panel_contract_of

    root = tmp_path_factory.mktemp("playground-panel")
    path = export_tiny_panel(root / "retail.onnx")
    contract = panel_contract_of(*tiny_panel_model())
    s = sample.panel_sample(contract, tiny_panel(), "retail-synthetic")
    assert s is not None and len(s["series"]) >= 3
    s["series"][0]["id"] = HOSTILE  # the sample is the file's metadata: untrusted text
    sample.embed(path, s)
    bare = Path(__file__).parent / "assets" / "panel-retail.onnx"  # a panel file without a sample
    models = f"retail={path},bare={bare}"
    with serve_bentoml(root, {"RNNOPS_MODELS": models}, "playground-panel") as (_, url, _):
        yield url, s


@pytest.fixture(scope="module")
def page(served, browser):  # noqa: F811
    url, _ = served
    browser.get(url + "/playground#forecast")
    _wait(browser, lambda d: d.execute_script("return window.__playground && window.__playground.ready"), 30)
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fc-series option")) > 0, 20, "no series listed")
    return browser


def entry(s: dict) -> dict:
    """The /forecast series entry of a sample series (its whole history), as the page builds it."""
    n = s["context"]
    return {
        "id": s["id"],
        "timestamps": s["timestamps"][:n],
        "context": s["target"],
        "past_covariates": s["past_covariates"],
        "future_covariates": s["future_covariates"],
        "static": {k: v for k, v in s["static"].items() if v is not None},
    }


def test_a_panel_series_is_forecast_with_its_covariates_and_promotion_days(page, served, shots):  # noqa: F811
    url, sample = served
    ids = [o.get_attribute("value") for o in page.find_elements(By.CSS_SELECTOR, "#fc-series option")]
    assert ids == [s["id"] for s in sample["series"]]
    assert _by(page, "#fc-source").is_displayed() is False and _by(page, "#fc-series-box").is_displayed()
    assert "panel model of sales" in _by(page, "#fc-model option").text
    assert "future covariates promo" in _by(page, "#fc-info").text
    # the series with the most promotion days over its span
    s = max(sample["series"][1:], key=lambda x: sum(v == 1 for v in x["future_covariates"]["promo"]))
    promo_days = sum(v == 1 for v in s["future_covariates"]["promo"])
    assert promo_days > 0, "the tiny panel's sample should hold a promotion"
    Select(_by(page, "#fc-series")).select_by_value(s["id"])
    assert "promo = 1" in _by(page, "#fc-series-info").text
    _by(page, "#fc-go").click()
    _wait(page, lambda d: _by(d, "#fc-status").get_attribute("data-state") in ("done", "error"), 20, "no forecast")
    assert _by(page, "#fc-status").get_attribute("data-state") == "done", _by(page, "#fc-error").text
    figs = page.find_elements(By.CSS_SELECTOR, "#fc-charts figure.chart")
    target, covs = figs[0], {f.get_attribute("data-covariate"): f for f in figs[1:]}
    assert target.get_attribute("data-series") == s["id"]
    assert target.get_attribute("data-history-points") == str(s["context"])
    assert target.get_attribute("data-forecast-points") == str(HORIZON)
    assert target.get_attribute("data-band") == "yes"
    assert target.get_attribute("data-marked") == str(promo_days)
    assert set(covs) == {"price", "promo"}
    assert covs["promo"].get_attribute("data-role") == "future"
    assert covs["promo"].get_attribute("data-marked") == str(promo_days)
    assert covs["price"].get_attribute("data-marked") == "0"  # a price is no event
    assert all(f.find_elements(By.CSS_SELECTOR, "canvas") for f in figs)
    # what the page drew is the server's answer for that series
    shown = page.execute_script("return window.__playground.forecast")
    direct = httpx.post(url + "/forecast", json={"model": "retail", "series": [entry(s)]}).json()["series"][0]
    np.testing.assert_allclose(shown["forecast"], direct["forecast"]["sales"], rtol=1e-6)
    assert shown["timestamps"] == direct["timestamps"]
    assert _severe(page) == []
    shots(page, "playground-panel-forecast")


def test_a_series_session_fed_step_by_step_ends_at_the_same_forecast(page, served):
    url, sample = served
    s = next(x for x in sample["series"][1:] if x["id"] == _by(page, "#fc-series").get_attribute("value"))
    before = page.execute_script("return window.__playground.forecast.forecast")
    page.execute_script(
        "const r = document.getElementById('fc-speed'); r.value = r.min; r.dispatchEvent(new Event('input'));"
    )
    _by(page, "#fc-session").click()
    st = lambda d: _by(d, "#fc-status")  # noqa: E731
    _wait(page, lambda d: st(d).get_attribute("data-state") == "error" or "session done" in st(d).text, 60, "no end")
    status = _by(page, "#fc-status").text
    assert "session done" in status, _by(page, "#fc-error").text
    fed = min(HORIZON, s["context"] - 1)
    assert f"{fed} observations of series {s['id']}" in status
    after = page.execute_script("return window.__playground.forecast")
    assert after["series"] == s["id"] and after["history"] == s["context"]
    # the session answered through the same batcher as /forecast (the graph is not batch-invariant
    # on ORT CPU to the last bit: docs/serving.md), from the same history and covariates
    np.testing.assert_allclose(after["forecast"], before, rtol=1e-5, atol=1e-5)
    assert httpx.get(f"{url}/sessions/{s['id']}").status_code == 404  # the page closed it
    assert _severe(page) == []


def test_a_hostile_series_id_shows_as_text(page, served):
    url, _ = served
    Select(_by(page, "#fc-series")).select_by_index(0)
    assert _by(page, "#fc-series option").text == HOSTILE
    _by(page, "#fc-go").click()
    _wait(page, lambda d: _by(d, "#fc-status").get_attribute("data-state") in ("done", "error"), 20)
    assert _by(page, "#fc-status").get_attribute("data-state") == "done", _by(page, "#fc-error").text
    assert HOSTILE in _by(page, "#fc-status").text
    assert page.find_elements(By.CSS_SELECTOR, "#tab-forecast img") == []
    assert page.execute_script("return window.__pwned === undefined")


def test_a_panel_model_without_a_sample_says_why(page):
    Select(_by(page, "#fc-model")).select_by_value("bare")
    err = _by(page, "#fc-error")
    _wait(page, lambda d: err.is_displayed(), 10, "no error shown")
    assert "carries no validation sample" in err.text and "export it again" in err.text, err.text
    assert page.find_elements(By.CSS_SELECTOR, "#fc-series option") == []
    assert _severe(page, allow=("status of 404",)) == []


def test_the_models_tab_describes_a_panel_model(page):
    _by(page, "[data-tab=models]").click()
    _wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models-list .card")) == 2, 10)
    card = _by(page, "#models-list .card[data-model=retail]").text
    assert "panel forecaster" in card and "future covariates\npromo" in card and "past covariates\nprice" in card, card
    assert "store (" in card and "size" in card, card
    assert "2 forecast models" in _by(page, "#server-status").text
    _by(page, "[data-tab=forecast]").click()
