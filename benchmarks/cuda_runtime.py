"""CUDA provider path of serving.runtime vs CPU, and in-process scheduler throughput.

What ran on the lent H200 (figures: docs/device/h200-2026-11-28.json, docs/serving.md):

    python benchmarks/cuda_runtime.py --make-models DIR     # here, with torch: ONNX files (zeroed weights, gzip)
    OUT=. python benchmarks/cuda_runtime.py --models DIR    # there, with onnxruntime-gpu: the run

Weights are re-randomised (seeded) on load: timings don't depend on values, and zeroed files
gzip to a few hundred KB for the trip. Needs onnxruntime-gpu with CUDA 13 libraries.
"""

import argparse
import gzip
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def make_models(folder: str) -> None:
    import gzip
    import os
    import shutil
    import string

    import onnx
    from onnx import numpy_helper

    from rnnops.export.onnx_export import export_onnx
    from rnnops.training.models import CharModel, CharModelConfig

    Path(folder).mkdir(parents=True, exist_ok=True)
    vocab = sorted(set(string.ascii_letters + string.digits + " \n.,;:!?'-&$3"))[:65]
    for name, hidden, layers, embed in (("lstm2x512", 512, 2, 64), ("quick1x384", 384, 1, 64)):
        cfg = CharModelConfig(
            vocab_size=len(vocab), cell="lstm", hidden_size=hidden, num_layers=layers, embed_dim=embed
        )
        path = f"{folder}/{name}.onnx"
        export_onnx(CharModel(cfg).eval(), {"kind": "char", "config": cfg.to_dict(), "vocab": vocab}, path)
        p = onnx.load(path)
        for init in p.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype.kind == "f":
                init.CopyFrom(numpy_helper.from_array(a * 0, init.name))
        onnx.save(p, path)
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
        os.remove(path)


ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--models", default=".devout/gpu", help="folder of *.onnx.gz made by --make-models")
ap.add_argument("--make-models", metavar="DIR", help="write the ONNX files (needs torch) and exit")
ARGS = ap.parse_args()
if ARGS.make_models:
    make_models(ARGS.make_models)
    raise SystemExit(0)

OUT = Path(os.environ.get("OUT", "/tmp/out"))
res = {"ort": ort.__version__, "providers": ort.get_available_providers(), "cpu_count": os.cpu_count()}
try:
    ort.preload_dlls()  # CUDA/cuDNN from the nvidia-* wheels already installed there
except Exception as exc:
    res["preload"] = str(exc)
print(res, flush=True)
import onnx
from onnx import numpy_helper

rng = np.random.default_rng(0)
models = {}
for gz in sorted(Path(ARGS.models).glob("*.onnx.gz")):
    path = Path("/tmp") / gz.name[:-3]
    with gzip.open(gz) as f, open(path, "wb") as g:
        shutil.copyfileobj(f, g)
    p = onnx.load(str(path))
    for init in p.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array((rng.standard_normal(a.shape) * 0.08).astype(a.dtype), init.name))
    onnx.save(p, str(path))
    models[path.stem] = path

from rnnops.serving.generate.naive import NaiveGenerator
from rnnops.serving.generate.sampling import SamplingParams
from rnnops.serving.generate.scheduler import GenerationRequest, StepScheduler
from rnnops.serving.runtime import Runtime


def lat(rt, batch, budget=1.0, min_runs=20):
    state = rt.zero_state(batch)
    tok = rng.integers(0, 60, (batch, 1)).astype(np.int64)
    for _ in range(5):
        state = rt.run(tok, state, "last").state
    ts = []
    t_end = time.perf_counter() + budget
    while len(ts) < min_runs or time.perf_counter() < t_end:
        t = time.perf_counter()
        state = rt.run(tok, state, "last").state
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


kernel = []
parity = {}
for name, path in models.items():
    cpu2 = Runtime(path, providers="cpu", threads=2)
    cpu16 = Runtime(path, providers="cpu", threads=16)
    cuda = Runtime(path, providers="cuda")
    cuda_nobind = Runtime(path, providers="cuda", iobinding="0")
    res.setdefault("cuda_providers", cuda.providers)
    # CUDA vs CPU parity: 64 steps of carried state, batch 8
    toks = rng.integers(0, 60, (8, 64)).astype(np.int64)
    sc, sg = cpu2.zero_state(8), cuda.zero_state(8)
    worst = 0.0
    for t in range(64):
        rc = cpu2.run(toks[:, t : t + 1], sc, "last")
        rg = cuda.run(toks[:, t : t + 1], sg, "last")
        (lc, sc), (lg, sg) = (rc.output, rc.state), (rg.output, rg.state)
        worst = max(worst, float(np.abs(lc - lg).max()))
    parity[name] = worst
    for b in (1, 8, 64, 256):
        row = {"model": name, "batch": b}
        for label, rt in (("cpu2", cpu2), ("cpu16", cpu16), ("cuda_iobinding", cuda), ("cuda_copy", cuda_nobind)):
            row[label + "_ms"] = lat(rt, b) * 1e3
        kernel.append(row)
        print(row, flush=True)
res["kernel"] = kernel
res["parity_max_abs_logit_diff_cuda_vs_cpu"] = parity


def sched_run(gen, n, chars=200):
    gen.start()
    reqs = [
        GenerationRequest(prompt_ids=np.array([1, 2, 3, 4], np.int64), max_chars=chars, params=SamplingParams(), seed=i)
        for i in range(n)
    ]
    t = time.perf_counter()
    streams = [gen.submit(r) for r in reqs]
    texts = [s.result(timeout=600) for s in streams]
    dt = time.perf_counter() - t
    gen.stop()
    return sum(len(x) for x in texts) / dt, texts


sched = []
path = models["quick1x384"]
for n in (1, 8, 64, 256):
    row = {"streams": n}
    for label, mk in (
        ("cuda_scheduler", lambda: StepScheduler(Runtime(path, providers="cuda"), max_active=256, max_queue=1024)),
        (
            "cpu2_scheduler",
            lambda: StepScheduler(Runtime(path, providers="cpu", threads=2), max_active=256, max_queue=1024),
        ),
        (
            "cpu2_naive",
            lambda: NaiveGenerator(Runtime(path, providers="cpu", threads=2), max_active=256, max_queue=1024),
        ),
    ):
        if label == "cpu2_naive" and n == 256:
            continue
        cps, texts = sched_run(mk(), n)
        row[label + "_chars_per_s"] = cps
        if label == "cuda_scheduler":
            solo = sched_run(StepScheduler(Runtime(path, providers="cuda")), 1)[1][0]
            row["cuda_seed0_same_alone_and_batched"] = solo == texts[0]
    print(row, flush=True)
    sched.append(row)
res["scheduler"] = sched
(OUT / "gpu.json").write_text(json.dumps(res, indent=1))
print("## kernel (ms per step, T=1)")
for r in kernel:
    print(r)
print("## scheduler")
[print(r) for r in sched]
