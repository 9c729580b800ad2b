"""The browser playground in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, ``bash scripts/install_chromium.sh``), driven by Selenium against one real
``bentoml serve`` with tiny models from files and API keys on: the page asks for a key (kept in
session storage), loads without console errors, text
streams in and ends with the server's stats, the hidden-unit view colors every character, a
forecast plots the history and the horizon, a session animates, /metrics feeds the live view,
and a bad input shows the server's own message. Screenshots go to the test's temporary folder
(and to ``$RNNOPS_PLAYGROUND_SHOTS`` when set: ``docs/img/`` holds current ones)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
httpx = pytest.importorskip("httpx")
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from servers import missing, serve_bentoml  # noqa: E402
from test_runtime import export_char, export_forecaster  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LOOKBACK, HORIZON = 24, 8
KEY = "playground-test-key"  # the server runs with API keys: the page asks for one
AUTH = {"authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from rnnops.export import sample

    root = tmp_path_factory.mktemp("playground")
    export_char(root / "char.onnx", "lstm", hidden=32, layers=2)
    export_forecaster(root / "fc.onnx", norm="fixed", lookback=LOOKBACK, horizon=HORIZON)
    t = np.arange(LOOKBACK + HORIZON)
    rows = np.stack([np.sin(t / 3), np.cos(t / 5), 10 + 3 * np.sin(t / 4)], 1).round(4)
    stamps = np.datetime_as_string(np.datetime64("2024-01-01T00:00") + t * np.timedelta64(1, "h"), unit="s")
    sample.embed(
        root / "fc.onnx",
        {
            "split": "val",
            "source": "synthetic",
            "start_row": 100,
            "features": ["a", "b", "OT"],
            "targets": ["OT"],
            "lookback": LOOKBACK,
            "horizon": HORIZON,
            "context_rows": LOOKBACK,
            "timestamps": [str(s) for s in stamps],
            "rows": rows.tolist(),
        },
    )
    assert sample.read(root / "fc.onnx")["rows"] == rows.tolist()
    env = {"RNNOPS_MODELS": f"char={root / 'char.onnx'},forecaster={root / 'fc.onnx'}", "RNNOPS_API_KEYS": KEY}
    with serve_bentoml(root, env, "playground") as (_, url, _):
        yield url


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("playground-screenshots")
    keep = os.environ.get("RNNOPS_PLAYGROUND_SHOTS")
    saved = []

    def save(driver, name: str) -> Path:
        path = d / f"{name}.png"
        driver.save_screenshot(str(path))
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(keep) / path.name)
        saved.append(path)
        return path

    yield save
    print(f"\nplayground screenshots: {d}")


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        missing("no Debian chromium + chromium-driver (bash scripts/install_chromium.sh)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,900",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # never a browser download
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, cond, timeout: float = 20.0, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=what)


def _severe(driver, allow: tuple[str, ...] = ()) -> list[str]:
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and not any(a in e["message"] for a in allow)
    ]


def _by(driver, css: str):
    return driver.find_element(By.CSS_SELECTOR, css)


def _set(driver, css: str, value: str) -> None:
    el = _by(driver, css)
    el.clear()
    el.send_keys(value)


@pytest.fixture(scope="module")
def page(server, browser):
    browser.get(server + "/")  # redirects to /playground (the page and its files need no key)
    # its first API request gets a 401: the page asks for a key
    _wait(browser, lambda d: _by(d, "#key-dialog").get_attribute("open") is not None, 20, "no key dialog")
    assert "API key" in _by(browser, "#key-reason").text
    _by(browser, "#key-input").send_keys(KEY)
    _by(browser, "#key-form button.primary").click()
    _wait(
        browser,
        lambda d: d.execute_script("return window.__playground && window.__playground.ready"),
        30,
        "the page never became ready",
    )
    assert browser.execute_script("return sessionStorage.getItem('rnnops.apiKey')") == KEY
    assert KEY not in browser.current_url
    return browser


def test_the_page_loads_without_console_errors(page, server, shots):
    assert page.current_url.split("#")[0].endswith("/playground")
    assert page.title == "rnnops playground"
    options = [o.get_attribute("value") for o in page.find_elements(By.CSS_SELECTOR, "#gen-model option")]
    assert options == ["char"]
    assert [o.get_attribute("value") for o in page.find_elements(By.CSS_SELECTOR, "#fc-model option")] == ["forecaster"]
    assert "1 char" in _by(page, "#server-status").text
    # every asset is served by the service itself (no CDN): the plotting library included
    r = httpx.get(server + "/playground/static/vendor/uplot/uPlot.esm.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert httpx.get(server + "/playground/static/%2e%2e/playground.py").status_code == 404  # only its own files
    assert _severe(page, allow=("status of 401",)) == []  # the request that asked for the key
    assert httpx.get(server + "/models").status_code == 401
    shots(page, "playground-start")


def test_generation_streams_text_that_grows_and_ends_with_the_done_stats(page, shots):
    _set(page, "#gen-max", "900")
    _set(page, "#gen-seed", "7")
    _by(page, "#gen-color input[value=none]").click()
    _by(page, "#gen-go").click()
    out, stats = _by(page, "#gen-output"), _by(page, "#gen-stats")
    seen = []
    deadline = time.monotonic() + 30
    while stats.get_attribute("data-state") != "done" and time.monotonic() < deadline:
        seen.append(len(out.get_attribute("textContent")))
        time.sleep(0.03)
    text = out.get_attribute("textContent")
    assert stats.get_attribute("data-state") == "done", stats.text
    assert text.startswith("ROMEO:\n") and len(text) == len("ROMEO:\n") + 900
    grew = sorted(set(n for n in seen if 7 < n < len(text)))
    lengths = page.execute_script("return window.__playground.generation.lengths")
    assert len(lengths) >= 2 and lengths == sorted(lengths) and lengths[-1] == 900  # several chunk events
    assert grew, f"the text never showed part of the stream: polled lengths {seen[:10]}..."
    s = stats.text
    assert "900 chars" in s and "finish length" in s and "seed 7" in s and "chars/s" in s, s
    assert "chars/s" in _by(page, "#gen-live").text and "first char after" in _by(page, "#gen-live").text
    assert _severe(page) == []
    shots(page, "playground-generate")


def test_the_hidden_unit_view_colors_every_character(page, shots):
    _set(page, "#gen-max", "120")
    _by(page, "#gen-color input[value=unit]").click()
    # the default: the last layer of h
    assert _by(page, "#unit-tensor").get_attribute("value") == "hn"
    assert _by(page, "#unit-layer").get_attribute("value") == "1"
    _by(page, "#gen-go").click()
    _wait(
        page,
        lambda d: _by(d, "#gen-output").get_attribute("data-traced") == str(7 + 120),
        40,
        "the state trace did not finish",
    )
    spans = page.find_elements(By.CSS_SELECTOR, "#gen-output .ch")
    assert len(spans) == 127
    colors = page.execute_script(
        "return [...document.querySelectorAll('#gen-output .ch')].map(s => s.style.background)"
    )
    assert all(c.startswith("rgba(") for c in colors), colors[:5]
    assert len(set(colors)) > 10  # the activation varies
    # the state the page traced is the model's: one unit's values, checked against a direct call
    values = page.execute_script("""const r = window.__playground.generation;
        return r.chars.map(c => c.state[0][32 + 5]);""")  # hn, layer 1, unit 5
    text = page.execute_script("return window.__playground.generation.chars.map(c => c.ch).join('')")
    vocab = httpx.get(page.current_url.split("/playground")[0] + "/models/char/vocab", headers=AUTH).json()["vocab"]
    ids = [vocab.index(c) for c in text]
    url = page.current_url.split("/playground")[0] + "/v2/models/char/infer"
    state, direct = None, []
    c = httpx.Client(headers=AUTH)
    for i in ids[:40]:  # one step per character, carrying the state (what the page did in batches)
        inputs = [{"name": "x", "shape": [1, 1], "datatype": "INT64", "data": [i]}]
        if state:
            inputs += [
                {"name": n, "shape": [2, 1, 32], "datatype": "FP32", "data": state[k]}
                for k, n in enumerate(("h0", "c0"))
            ]
        o = {
            t["name"]: t["data"]
            for t in c.post(url, json={"inputs": inputs, "outputs": [{"name": "hn"}, {"name": "cn"}]}).json()["outputs"]
        }
        state = [o["hn"], o["cn"]]
        direct.append(o["hn"][32 + 5])
    np.testing.assert_allclose(values[:40], direct, atol=1e-4)
    # probabilities from the same calls: every character after the first has one
    _by(page, "#gen-color input[value=prob]").click()
    probs = page.execute_script("return window.__playground.generation.chars.map(c => c.p)")
    assert probs[0] is None and all(0 < p <= 1 for p in probs[1:])
    _by(page, "#gen-color input[value=unit]").click()
    assert _severe(page) == []
    shots(page, "playground-hidden-unit")


def test_a_forecast_plots_history_and_horizon_and_a_session_animates(page, shots):
    _by(page, "[data-tab=forecast]").click()
    _by(page, "#fc-go").click()
    _wait(page, lambda d: _by(d, "#fc-status").get_attribute("data-state") == "done", 20, "no forecast")
    (fig,) = page.find_elements(By.CSS_SELECTOR, "#fc-charts figure.chart")
    assert fig.get_attribute("data-target") == "OT"
    assert fig.get_attribute("data-history-points") == str(LOOKBACK)
    assert fig.get_attribute("data-forecast-points") == str(HORIZON)
    assert fig.find_elements(By.CSS_SELECTOR, "canvas")  # uPlot drew it
    shots(page, "playground-forecast")
    # a session: the sample's context opens it, the following rows go one by one
    page.execute_script(
        "const r = document.getElementById('fc-speed'); r.value = r.min; r.dispatchEvent(new Event('input'));"
    )
    _by(page, "#fc-session").click()
    _wait(page, lambda d: "session done" in _by(d, "#fc-status").text, 30, "the session did not finish")
    assert f"{HORIZON} observations fed one by one" in _by(page, "#fc-status").text
    fig = _by(page, "#fc-charts figure.chart")
    assert fig.get_attribute("data-history-points") == str(LOOKBACK + HORIZON)
    assert fig.get_attribute("data-forecast-points") == str(HORIZON)
    assert _severe(page) == []


def test_the_live_view_reads_the_metrics_every_second(page, shots):
    _by(page, "[data-tab=live]").click()
    _wait(page, lambda d: int(_by(d, "#live-grid").get_attribute("data-reads") or 0) >= 2, 10, "no /metrics reads")
    cards = page.find_elements(By.CSS_SELECTOR, "#live-grid .live-card")
    assert [c.get_attribute("data-metric") for c in cards] == ["cps", "active", "queue", "batch"]
    # 256 streams (the page's most): four waves of 64, so the burst outlasts several one-second
    # reads. The active-streams gauge is read at an instant, unlike chars/s and the batch size: 8
    # streams once finished between two reads on CI, and 128 (two waves of about a second each on
    # a quiet machine) left it at 0 in one run of two
    _set(page, "#load-n", "256")
    _by(page, "#load-go").click()
    seen = lambda k: page.execute_script(f"return Math.max(0, ...window.__playground.live.{k})")  # noqa: E731
    try:
        _wait(page, lambda d: seen("active") >= 1 and seen("cps") > 0 and seen("batch") >= 1, 20)
    except Exception:
        raise AssertionError(
            f"the live figures did not follow the burst: {page.execute_script('return window.__playground.live')}, "
            f"{_by(page, '#live-error').text!r}"
        ) from None
    assert _severe(page) == []
    shots(page, "playground-live")
    _wait(
        page, lambda d: _by(d, "#load-go").is_enabled(), 120, "the burst did not finish"
    )  # the next tests get a quiet server
    _by(page, "[data-tab=models]").click()
    _wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#models-list .card")) == 2, 10)
    shots(page, "playground-models")


def test_an_invalid_input_shows_the_servers_error_message(page, server):
    _by(page, "[data-tab=generate]").click()
    _set(page, "#gen-prompt", "naïve €")
    _by(page, "#gen-go").click()
    err = _by(page, "#gen-error")
    _wait(page, lambda d: err.is_displayed(), 10, "no error shown")
    msg = httpx.post(server + "/generate", json={"prompt": "naïve €"}, headers=AUTH).json()["error"]
    assert "outside the vocabulary" in msg and msg in err.text
    assert _by(page, "#gen-stats").get_attribute("data-state") == "error"
    # a forecast the server refuses: a value beyond float32, in a pasted CSV
    _by(page, "[data-tab=forecast]").click()
    _by(page, "#fc-source input[value=csv]").click()
    _by(page, "#fc-csv").send_keys("a,b,OT\n1,2,3\n1,2,1e39\n")
    _by(page, "#fc-go").click()
    fe = _by(page, "#fc-error")
    _wait(page, lambda d: fe.is_displayed(), 10, "no forecast error shown")
    assert "is not a finite float32 value" in fe.text, fe.text
    # the browser logs the refused requests (400) and nothing else
    assert _severe(page, allow=("status of 400",)) == []


def test_the_validation_sample_is_the_middle_window_with_its_timestamps(tmp_path):
    """What ``rnnops export`` embeds for a forecaster (the playground's "validation sample")."""
    from rnnops.export import sample
    from rnnops.training.data import SeriesData

    n = 200
    values = np.arange(n * 2, dtype=np.float32).reshape(n, 2) / 3
    dates = np.datetime64("2024-01-01T00:00") + np.arange(n) * np.timedelta64(1, "h")
    series = SeriesData("toy", None, "0" * 64, dates, values, ["a", "OT"], ["OT"], (120, 160, 200))
    s = sample.validation_sample(series, lookback=24, horizon=8)
    starts = series.window_starts("val", 24, 8)
    start = int(starts[len(starts) // 2])
    assert s["start_row"] == start and s["context_rows"] == 24 and len(s["rows"]) == 32
    assert s["features"] == ["a", "OT"] and s["targets"] == ["OT"]
    np.testing.assert_allclose(s["rows"], values[start : start + 32], rtol=1e-6)
    assert s["timestamps"][0] == str(np.datetime_as_string(dates[start], unit="s"))
    assert sample.validation_sample(series, lookback=24, horizon=8) == s  # deterministic
    # embedded in an ONNX file: the runtime's contract metadata is untouched
    path, _ = export_forecaster(tmp_path / "fc.onnx", lookback=24, horizon=8, features=("a", "OT"))
    from rnnops.onnx_metadata import read_metadata

    before = read_metadata(path)
    sample.embed(path, s)
    sample.embed(path, s)  # replaces, never duplicates
    assert sample.read(path) == s and read_metadata(path) == before
    import onnx

    assert [p.key for p in onnx.load(str(path)).metadata_props].count("rnnops_sample") == 1
    # too large a window is not embedded
    wide = SeriesData(
        "wide",
        None,
        "0" * 64,
        None,
        np.zeros((6000, 8), np.float32),
        [f"f{i}" for i in range(8)],
        ["f7"],
        (3000, 5000, 6000),
    )
    assert sample.validation_sample(wide, lookback=2800, horizon=96) is None  # 2,896 x 8 values
