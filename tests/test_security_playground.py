"""The playground, in a real headless Chromium, with a hostile model served (issue 24).

A forecaster trained (real training, real export) on a CSV whose file and column names are HTML
with script in it, and a char model whose vocabulary holds ``< > " ' &``, prompted with markup.
The page is opened on every tab: generation (with the per-character tooltip), the forecast
(info line, chart captions, the validation sample's source), a pasted CSV whose header is
markup (its error message), and the model cards (features, targets, run id and version, also
made hostile). The test asserts that no script ran (a sentinel each payload would set), that
the strings show as text, that no element carries an inline handler or came from the payload,
and that the console reports no Content-Security-Policy violation (nor any other error).
Its screenshot is saved to the test's temporary folder (and ``$RNNOPS_PLAYGROUND_SHOTS``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pd = pytest.importorskip("pandas")
pytest.importorskip("selenium.webdriver")

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from servers import serve_bentoml  # noqa: E402
from test_playground import _by, _set, _wait, browser  # noqa: E402,F401  (the Chromium fixture and helpers)

pytestmark = pytest.mark.slow

# each payload would set the sentinel (window.__pwned) or the title if it ever ran
IMG = "<img src=x onerror=\"window.__pwned=1;document.title='XSS-'+document.title\">"
QUOTES = "\"dq\" & 'sq' <b>bold</b>"
SCRIPT = "<script>window.__pwned=2</script>"
SVG = "<svg onload=window.__pwned=3>"  # the CSV's file name: the validation sample's `source`
PROMPT = '<img src=x onerror="window.__pwned=4"> & \'x\' "'
LINES = ["<b>bold</b> & more", 'say "hi" to <i>them</i>', PROMPT, SCRIPT]
CHAR_TEXT = "\n".join(f"{LINES[i % 4]} {i % 5}" for i in range(300))


def _hostile_metadata(path: Path, **values) -> None:
    """Overwrite some rnnops.* metadata of an exported file (fields training cannot make hostile)."""
    from rnnops import contract

    proto = onnx.load(str(path))
    encoded = contract.encode_metadata(values)
    for p in proto.metadata_props:
        if p.key in encoded:
            p.value = encoded[p.key]
    onnx.save(proto, str(path))


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory):
    import mlflow

    from rnnops.export.pipeline import export_run
    from rnnops.training import jobs

    root = tmp_path_factory.mktemp("hostile")
    mp = pytest.MonkeyPatch()
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "RNNOPS_CACHE": str(root / "cache"),
        "RNNOPS_CHECKPOINTS": str(root / "checkpoints"),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for k, v in env.items():
        mp.setenv(k, v)
    mp.chdir(root)
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        t = np.arange(400)
        csv = root / f"{SVG}.csv"
        pd.DataFrame({IMG: np.sin(t / 8.0), QUOTES: np.cos(t / 13.0), SCRIPT: np.sin(t / 8.0 + 1) * 2 + 5}).to_csv(
            csv, index=False
        )
        text = root / "markup.txt"
        text.write_text(CHAR_TEXT, encoding="utf-8")
        quick = {"train.steps": 3, "train.eval_every": 3}
        fc_run = jobs.run_job(
            jobs.forecast_job(
                str(csv),
                "gru",
                "tiny",
                {**quick, "lookback": 16, "horizon": 4, "model.norm": "fixed", "model.hidden_size": 16},
            )
        )
        char_run = jobs.run_job(jobs.char_job(str(text), "gru", "tiny", {**quick, "model.hidden_size": 16}))
        files = {}
        for name, run in (("fc", fc_run), ("char", char_run)):
            out = export_run(
                run, formats=("onnx",), quantize=False, progress=False, log=False, out_dir=root / f"export-{name}"
            )
            files[name] = root / f"{name}.onnx"
            shutil.copy(out.onnx_path, files[name])
            _hostile_metadata(files[name], source_run=QUOTES, version=IMG)
        models = f"char={files['char']},forecaster={files['fc']}"
        with serve_bentoml(root, {"RNNOPS_MODELS": models}, "hostile") as (_, url, _):
            yield url
    finally:
        mp.undo()


def _no_script_ran(driver) -> None:
    assert driver.execute_script("return window.__pwned === undefined"), "a payload ran"
    assert driver.title == "rnnops playground"
    found = driver.execute_script("""
      const bad = [];
      for (const e of document.querySelectorAll('*')) {
        for (const a of e.attributes) if (/^on/i.test(a.name)) bad.push(e.tagName + ' ' + a.name);
      }
      for (const e of document.querySelectorAll('img, b:not(#gen-stats b):not(.tooltip b), i, svg:not(.u-legend svg)')) {
        if (e.closest('header.top')) continue;
        if (e.tagName === 'IMG' || e.tagName === 'I' || e.textContent === 'bold') bad.push('payload element ' + e.tagName);
      }
      return bad;""")
    assert found == []


def test_a_hostile_model_shows_as_text_and_runs_no_script(hostile_server, browser, tmp_path):  # noqa: F811
    d = browser
    d.get(hostile_server + "/playground#generate")
    _wait(d, lambda d: d.execute_script("return window.__playground && window.__playground.ready"), 40, "not ready")
    # generate from a markup prompt; color by probability so every character gets a tooltip
    _set(d, "#gen-prompt", PROMPT)
    _set(d, "#gen-max", "40")
    _set(d, "#gen-seed", "3")
    _by(d, "#gen-color input[value=prob]").click()
    _by(d, "#gen-go").click()
    _wait(d, lambda d: _by(d, "#gen-stats").get_attribute("data-state") == "done", 60, "generation never finished")
    _wait(d, lambda d: _by(d, "#gen-output").get_attribute("data-traced"), 60, "the state trace never finished")
    out = _by(d, "#gen-output")
    assert out.text.startswith(PROMPT)  # the prompt's markup as characters
    spans = out.find_elements(By.CSS_SELECTOR, ".ch")
    amp = next(s for s in spans if s.text == "&")  # a prompt character, with its probability once traced
    ActionChains(d).move_to_element(amp).perform()
    tip = _by(d, "#tooltip")
    _wait(d, lambda d: tip.is_displayed(), 10, "no tooltip")
    assert tip.text.startswith("&") and "p = " in tip.text
    # the forecast tab: info line, a forecast from the embedded sample, captions
    _by(d, ".tabs button[data-tab=forecast]").click()
    info = _by(d, "#fc-info").text
    assert IMG in info and QUOTES in info and SCRIPT in info
    _by(d, "#fc-go").click()
    _wait(d, lambda d: _by(d, "#fc-status").get_attribute("data-state") in ("done", "error"), 30, "no forecast")
    assert _by(d, "#fc-status").get_attribute("data-state") == "done", _by(d, "#fc-error").text
    assert SVG in _by(d, "#fc-status").text  # the sample's source: the CSV's file name
    captions = [c.text for c in d.find_elements(By.CSS_SELECTOR, "#fc-charts figcaption")]
    assert any(c.startswith(IMG) for c in captions) and any(c.startswith(SCRIPT) for c in captions), captions
    # a pasted CSV whose header is markup: the page's own error message quotes it
    _by(d, "#fc-source input[value=csv]").click()
    _set(d, "#fc-csv", f"{PROMPT},x\n1,2\n3,4\n")
    _by(d, "#fc-go").click()
    _wait(d, lambda d: _by(d, "#fc-error").is_displayed(), 10, "no CSV error")
    assert PROMPT in _by(d, "#fc-error").text
    # the model cards: features, targets, run id and version are all hostile
    _by(d, ".tabs button[data-tab=models]").click()
    _wait(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models-list .card")) == 2, 10, "no model cards")
    cards = _by(d, "#models-list").text
    assert IMG in cards and QUOTES in cards and SCRIPT in cards
    _shot(d, tmp_path, "playground-hostile-models")
    _by(d, ".tabs button[data-tab=forecast]").click()
    _shot(d, tmp_path, "playground-hostile-forecast")
    _no_script_ran(d)
    logs = d.get_log("browser")
    assert [e["message"] for e in logs if "Content Security Policy" in e["message"]] == []
    assert [e["message"] for e in logs if e["level"] == "SEVERE"] == []


def _shot(driver, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    if os.environ.get("RNNOPS_PLAYGROUND_SHOTS"):
        Path(os.environ["RNNOPS_PLAYGROUND_SHOTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(os.environ["RNNOPS_PLAYGROUND_SHOTS"]) / path.name)
