"""The Ray Serve peer for ``ray_serve.py``: streamed char generation with ``@serve.batch``.

Runs in the Ray virtualenv (``~/.cache/rnnops/peers/ray-venv``), not in ours: it imports only
Ray, onnxruntime, numpy and Starlette. Written the way Ray Serve's "Dynamic Request Batching"
guide, section "Streaming batched requests" (docs.ray.io/en/latest/serve/advanced-guides/
dyn-req-batch.html) shows it: the batched method is an ``async def`` generator decorated with
``@serve.batch``; it takes the list of requests that make the batch and on each iteration yields
one output per member, ``StopIteration`` for a member that has finished (so that its HTTP
stream ends then, not when the batch ends). A batch is formed once (``max_batch_size`` requests
or ``batch_wait_timeout_s`` after the first) and runs until its longest member is done; with
the default ``max_concurrent_batches=1`` requests that arrive meanwhile wait for the next batch.

Per step: one onnxruntime call for the whole batch (T=1 step with the carried LSTM/GRU state,
in a thread so the replica's event loop keeps sending), temperature sampling for every row at
once with numpy, one SSE ``chunk`` event per member (the same framing as our ``/generate``:
``event: chunk`` / ``data: {"text": ...}``, then ``event: done``). Prompts are prefilled one
request at a time (they differ in length; padding would change an RNN's state) and the
states stacked. The vocabulary comes from the ONNX file's ``rnnops.vocab`` metadata.

    python ray_app.py --onnx m.onnx --port 8000 --threads 1 [--max-batch-size 256]

prints ``READY <port>`` once Serve answers, then serves until SIGTERM/SIGINT (then shuts Serve
and Ray down; the benchmark runs ``ray stop --force`` after it as well).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncGenerator

import numpy as np
import onnxruntime as ort
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import StreamingResponse


def sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def make_deployment(
    max_batch_size: int, batch_wait_timeout_s: float, max_concurrent_batches: int, max_ongoing_requests: int
):
    @serve.deployment(num_replicas=1, max_ongoing_requests=max_ongoing_requests)
    class CharGenerator:
        def __init__(self, onnx_path: str, threads: int):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            self.sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
            meta = self.sess.get_modelmeta().custom_metadata_map
            self.vocab = json.loads(meta["rnnops.vocab"])
            self.index = {c: i for i, c in enumerate(self.vocab)}
            self.state_in = [i.name for i in self.sess.get_inputs() if i.name != "x"]
            self.state_out = [o.name for o in self.sess.get_outputs() if o.name != "logits"]
            self.state_shape = {i.name: i.shape for i in self.sess.get_inputs() if i.name != "x"}  # [layers, B, H]
            self.rng = np.random.default_rng()

        def _zeros(self, b: int) -> list[np.ndarray]:
            return [np.zeros((s[0], b, s[2]), np.float32) for s in (self.state_shape[n] for n in self.state_in)]

        def _run(self, x: np.ndarray, state: list[np.ndarray]):
            out = self.sess.run(None, {"x": x, **dict(zip(self.state_in, state))})
            return out[0], out[1:]

        def _prefill(self, prompts: list[str]):
            """Each prompt alone (their lengths differ), then the states stacked on the batch axis."""
            last, states = [], []
            for p in prompts:
                ids = np.array([[self.index.get(c, 0) for c in (p or "\n")]], np.int64)
                logits, st = self._run(ids, self._zeros(1))
                last.append(logits[:, -1])
                states.append(st)
            return np.concatenate(last), [np.concatenate(parts, axis=1) for parts in zip(*states)]

        def _sample(self, logits: np.ndarray, temperature: np.ndarray) -> np.ndarray:
            z = logits / temperature[:, None]
            z -= z.max(axis=1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(axis=1, keepdims=True)
            u = self.rng.random((len(p), 1))
            return np.minimum((p.cumsum(axis=1) < u).sum(axis=1), len(self.vocab) - 1)

        @serve.batch(
            max_batch_size=max_batch_size,
            batch_wait_timeout_s=batch_wait_timeout_s,
            max_concurrent_batches=max_concurrent_batches,
        )
        async def generate(self, bodies: list[dict]) -> AsyncGenerator[list[str | StopIteration], None]:
            limits = [int(b.get("max_chars", 256)) for b in bodies]
            temperature = np.array([float(b.get("temperature", 1.0)) or 1e-6 for b in bodies], np.float32)
            logits, state = await asyncio.to_thread(self._prefill, [b.get("prompt", "") for b in bodies])
            for i in range(max(limits)):
                tok = self._sample(logits, temperature)
                out: list = []
                for k, n in enumerate(limits):
                    if i < n:
                        out.append(sse("chunk", {"text": self.vocab[tok[k]]}))
                    elif i == n:
                        out.append(sse("done", {"chars": n, "finish_reason": "length"}))
                    else:
                        out.append(StopIteration)
                yield out
                if i + 1 < max(limits):
                    logits, state = await asyncio.to_thread(self._run, tok[:, None].astype(np.int64), state)
                    logits = logits[:, -1]
            yield [
                sse("done", {"chars": n, "finish_reason": "length"}) if n == max(limits) else StopIteration
                for n in limits
            ]

        async def __call__(self, request: Request) -> StreamingResponse:
            body = await request.json()
            return StreamingResponse(self.generate(body), status_code=200, media_type="text/event-stream")

    return CharGenerator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (the same as ours)")
    ap.add_argument("--num-cpus", type=int, default=1, help="CPUs Ray may schedule on (ray.init num_cpus)")
    ap.add_argument("--max-batch-size", type=int, default=256)
    ap.add_argument("--batch-wait-timeout-s", type=float, default=0.01, help="Ray's default: 0.01")
    ap.add_argument("--max-concurrent-batches", type=int, default=1, help="Ray's default: 1")
    a = ap.parse_args()
    # the Ray head's services (GCS, raylet, Serve controller and proxy) start as this process's
    # descendants, so the benchmark can count their CPU and memory; the dashboard is left off
    ray.init(num_cpus=a.num_cpus, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": a.port})
    dep = make_deployment(
        a.max_batch_size,
        a.batch_wait_timeout_s,
        a.max_concurrent_batches,
        max_ongoing_requests=max(a.max_batch_size, 256) * 2,
    )
    serve.run(dep.bind(os.path.abspath(a.onnx), a.threads), name="chars", route_prefix="/", blocking=False)
    print(f"READY {a.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    try:
        serve.shutdown()
    finally:
        ray.shutdown()
    sys.exit(0)


if __name__ == "__main__":
    main()
