"""The ecosystem's protocols against the native endpoints, one server, same models, same load.

1. ``/v1/completions`` streaming vs ``/generate`` at 64 streams (aggregate chars/s; goal: within
   10 %), random-weight 1x512 LSTM char model (as ``streaming.py``).
2. OIP ``/v2/models/fc/infer`` with binary tensors vs ``/forecast`` (JSON), one 96x7 window per
   request, concurrency 64 (requests/s; goal: within 10 %).
3. 64 concurrent OIP sequences, one observation per request, vs 64 independent ``/forecast``
   calls over whole 96-row windows (requests/s, and the server's CPU per update).

Modes alternate over rounds (the machine may be shared); each figure is the median of its rounds.
A minimal asyncio HTTP/1.1 client with keep-alive keeps the load generator cheap.

    python benchmarks/protocols.py --quick          # 2 rounds of 4 s per mode
    python benchmarks/protocols.py --out protocols.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import tree_cpu_s  # noqa: E402
from streaming import build_model, start_server, stop_server  # noqa: E402

FEATURES, LOOKBACK, HORIZON = 7, 96, 96


def build_forecaster(path: Path, hidden: int = 64) -> Path:
    """A random-weight stateful (fixed-scaler) GRU forecaster shaped like ETTh1 M, in the contract."""
    import warnings

    import onnx
    import torch

    from rnnops import contract
    from rnnops.training.models import Forecaster, ForecasterConfig

    torch.manual_seed(0)
    names = [f"f{i}" for i in range(FEATURES)]
    cfg = ForecasterConfig(
        n_features=FEATURES,
        target_indices=list(range(FEATURES)),
        lookback=LOOKBACK,
        horizon=HORIZON,
        cell="gru",
        hidden_size=hidden,
        norm="fixed",
        scaler_mean=[0.0] * FEATURES,
        scaler_std=[1.0] * FEATURES,
        feature_names=names,
        target_names=names,
    )
    m = Forecaster(cfg).eval()

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x, h0):
            y, new = self.m(x, (h0,))
            return (y, *new)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrap(),
            (torch.zeros(2, LOOKBACK, FEATURES), *m.init_state(2)),
            str(path),
            input_names=["x", "h0"],
            output_names=["forecast", "hn"],
            dynamic_axes={"x": {0: "B", 1: "T"}, "forecast": {0: "B"}, "h0": {1: "B"}, "hn": {1: "B"}},
            dynamo=False,
            opset_version=17,
        )
    proto = onnx.load(str(path))
    meta = {
        "kind": "forecaster",
        "cell": "gru",
        "layers": 1,
        "hidden_size": hidden,
        "state_inputs": ["h0"],
        "state_outputs": ["hn"],
        "stateful": True,
        "feature_names": names,
        "target_names": names,
        "lookback": LOOKBACK,
        "horizon": HORIZON,
        "freq": "h",
        "source_run": None,
        "version": "benchmark",
    }
    for k, v in contract.encode_metadata(meta).items():
        p = proto.metadata_props.add()
        p.key, p.value = k, v
    onnx.save(proto, str(path))
    return path


# ----------------------------------------------------------------------------- a small client


class Conn:
    """One keep-alive HTTP/1.1 connection (responses with Content-Length, or chunked SSE)."""

    def __init__(self, port: int):
        self.port = port
        self.r = self.w = None

    async def open(self):
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port)

    async def post(self, path: str, body: bytes, headers: bytes = b"") -> tuple[int, bytes]:
        self.w.write(
            b"POST "
            + path.encode()
            + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        status = int((await self.r.readline()).split()[1])
        length = 0
        while (line := await self.r.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return status, await self.r.readexactly(length)

    def close(self):
        if self.w is not None:
            self.w.close()


async def sse_chars(port: int, path: str, body: dict) -> int:
    """Characters received by one streamed generation (/generate or /v1/completions)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    payload = json.dumps(body).encode()
    w.write(
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\nConnection: close\r\n\r\n" + payload
    )
    status = await r.readline()
    if b" 200 " not in status:
        raise RuntimeError(status.decode().strip() + repr((await r.read())[-200:]))
    while await r.readline() not in (b"\r\n", b""):
        pass
    chars, buf = 0, b""
    while True:
        size = int((await r.readline()).strip() or b"0", 16)
        if size == 0:
            break
        buf += (await r.readexactly(size + 2))[:-2]
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.split(b"data: ", 1)[1] if b"data: " in event else b""
            if event.startswith(b"event: chunk"):
                chars += len(json.loads(data)["text"])
            elif data.startswith(b"{") and path.startswith("/v1"):
                d = json.loads(data)
                if "error" in d:
                    raise RuntimeError(d["error"])
                chars += sum(len(c["text"]) for c in d["choices"])
    w.close()
    return chars


async def streams(port: int, path: str, n: int, chars: int, seconds: float, pid: int) -> dict:
    prompts = ["\nFirst Citizen:\n", "ROMEO: ", "To be, or not to be", "\n"]
    total, deadline = 0, time.perf_counter() + seconds

    async def client(i):
        nonlocal total
        k = 0
        while time.perf_counter() < deadline:
            p = prompts[(i + k) % 4]
            body = (
                {"prompt": p, "max_chars": chars, "seed": i * 1000 + k, "temperature": 0.8}
                if path == "/generate"
                else {
                    "model": "bench",
                    "prompt": p,
                    "max_tokens": chars,
                    "seed": i * 1000 + k,
                    "temperature": 0.8,
                    "stream": True,
                }
            )
            got = await sse_chars(port, path, body)  # (not `total += await ...`: it would read total first)
            total += got
            k += 1

    cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(n)))
    wall, cpu = time.perf_counter() - t0, tree_cpu_s(pid) - cpu0
    return {"chars_per_s": total / wall, "cpu_ms_per_1k_chars": 1e6 * cpu / max(1, total)}


async def requests(port: int, n: int, seconds: float, pid: int, make) -> dict:
    """``n`` connections, each sending what ``make(i, k)`` gives (path, body, headers) back to back."""
    conns = [Conn(port) for _ in range(n)]
    await asyncio.gather(*(c.open() for c in conns))
    done, bad, deadline = 0, 0, time.perf_counter() + seconds

    async def client(i, c):
        nonlocal done, bad
        k = 0
        while time.perf_counter() < deadline:
            status, _ = await c.post(*make(i, k))
            done += status == 200
            bad += status != 200
            k += 1

    cpu0, t0 = tree_cpu_s(pid), time.perf_counter()
    await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    wall, cpu = time.perf_counter() - t0, tree_cpu_s(pid) - cpu0
    for c in conns:
        c.close()
    if bad:
        print(f"  {bad} non-200 answers", file=sys.stderr)
    return {"requests_per_s": done / wall, "cpu_ms_per_request": 1e3 * cpu / max(1, done)}


def oip_binary(x: np.ndarray, params: dict | None = None) -> tuple[bytes, bytes]:
    head = {
        "inputs": [
            {"name": "x", "shape": list(x.shape), "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
        ],
        "parameters": {"binary_data_output": True, **(params or {})},
    }
    h = json.dumps(head).encode()
    return h + x.tobytes(), b"Inference-Header-Content-Length: " + str(len(h)).encode() + b"\r\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--chars", type=int, default=400)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rounds = a.rounds or 2 if a.quick else a.rounds or 3
    seconds = a.seconds or (4.0 if a.quick else 8.0)
    n = a.concurrency
    work = Path(tempfile.mkdtemp(prefix="rnnops-bench-protocols-"))
    char = build_model(work / "char.onnx", 512, 1, "lstm")
    fc = build_forecaster(work / "fc.onnx")
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(32, LOOKBACK, FEATURES)).astype(np.float32)
    fjson = [json.dumps({"model": "fc", "context": w.tolist()}).encode() for w in windows]
    fbin = [oip_binary(w[None]) for w in windows]
    obs = rng.normal(size=(n, 1, 1, FEATURES)).astype(np.float32)
    # start_server serves RNNOPS_MODELS=bench=<its onnx argument>: the char model as "bench", plus fc
    proc, port = start_server(f"{char},fc={fc}", "batched", 0, 256, work / "serve.log")
    results: dict[str, list[dict]] = {}
    try:
        import urllib.request

        for i in range(n):  # open the sequences
            body, hdr = oip_binary(obs[i], {"sequence_id": i + 1, "sequence_start": True})
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v2/models/fc/infer",
                data=body,
                method="POST",
                headers={"Inference-Header-Content-Length": hdr.split(b": ")[1].strip().decode()},
            )
            urllib.request.urlopen(req, timeout=30).read()
        modes = {
            "generate": lambda: streams(port, "/generate", n, a.chars, seconds, proc.pid),
            "v1_completions": lambda: streams(port, "/v1/completions", n, a.chars, seconds, proc.pid),
            "forecast": lambda: requests(port, n, seconds, proc.pid, lambda i, k: ("/forecast", fjson[(i + k) % 32])),
            "oip_infer_binary": lambda: requests(
                port, n, seconds, proc.pid, lambda i, k: ("/v2/models/fc/infer", *fbin[(i + k) % 32])
            ),
            "oip_sequences_1_obs": lambda: requests(
                port,
                n,
                seconds,
                proc.pid,
                lambda i, k: ("/v2/models/fc/infer", *oip_binary(obs[i], {"sequence_id": i + 1})),
            ),
        }
        for r in range(rounds):
            for name, run in modes.items():
                res = asyncio.run(run())
                results.setdefault(name, []).append(res)
                print(f"round {r + 1} {name}: " + ", ".join(f"{k} {v:.1f}" for k, v in res.items()), flush=True)
    finally:
        stop_server(proc)
    med = {name: {k: round(statistics.median(x[k] for x in rs), 2) for k in rs[0]} for name, rs in results.items()}
    med["ratios"] = {
        "v1_vs_generate_chars_per_s": round(med["v1_completions"]["chars_per_s"] / med["generate"]["chars_per_s"], 3),
        "oip_vs_forecast_requests_per_s": round(
            med["oip_infer_binary"]["requests_per_s"] / med["forecast"]["requests_per_s"], 3
        ),
        "sequences_vs_forecast_requests_per_s": round(
            med["oip_sequences_1_obs"]["requests_per_s"] / med["forecast"]["requests_per_s"], 3
        ),
        "sequences_vs_forecast_cpu_per_update": round(
            med["oip_sequences_1_obs"]["cpu_ms_per_request"] / med["forecast"]["cpu_ms_per_request"], 3
        ),
    }
    print(json.dumps(med, indent=1))
    if a.out:
        a.out.write_text(json.dumps({"concurrency": n, "rounds": rounds, "seconds": seconds, "results": med}, indent=1))


if __name__ == "__main__":
    main()
