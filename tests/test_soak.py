"""The soak benchmark's 60-second version (benchmarks/soak.py): mixed load on a real
``bentoml serve`` — streams of random lengths with a fifth dropped mid-stream, /forecast
clients, sessions updated at random — with a hot reload of both models every 20 seconds.
Asserted: no unexpected outcome, no leaked slot, no leaked session."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


@pytest.mark.slow
def test_sixty_seconds_of_mixed_load_with_reloads(tmp_path):
    import common as C
    import soak

    env, reload, windows, rows = soak.prepare(tmp_path)
    port = C.free_port()
    log = tmp_path / "server.log"
    proc = C.start_process(
        [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "rnnops.serving.service:RnnopsService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        {
            **os.environ,
            **env,
            "BENTOML_HOME": str(tmp_path / "bentoml"),
            "BENTOML_DO_NOT_TRACK": "true",
            "RNNOPS_THREADS": "1",
        },
        log,
        cwd=tmp_path,
    )
    try:
        C.wait_http(f"http://127.0.0.1:{port}/readyz", proc, log)
        res = asyncio.run(
            soak.soak(
                port,
                proc.pid,
                60,
                reload,
                20,
                streams=32,
                forecast_clients=8,
                sessions=20,
                windows=windows,
                rows=rows,
                bucket_s=20,
            )
        )
    finally:
        C.stop_process(proc)
    detail = soak.markdown(res) + "\n" + "\n".join(res["unexpected_examples"]) + "\n" + C.tail(log)
    assert res["reloads"] >= 2, detail
    assert res["unexpected"] == 0, detail
    assert res["active_after"] == 0, detail  # dropped streams freed their slots
    assert res["sessions_open_after"] == 0, detail
    assert res["outcomes"]["generate"].get("dropped", 0) > 0 and res["outcomes"]["generate"].get("200", 0) > 0
    assert res["outcomes"]["forecast"].get("200", 0) > 0 and res["outcomes"]["sessions"].get("200", 0) > 0
