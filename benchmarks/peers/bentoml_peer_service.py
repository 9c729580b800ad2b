"""The plain BentoML peer for ``bentoml_batching.py``: an ONNX forecaster behind ``@bentoml.api(batchable=True)``.

What a BentoML user writes after BentoML's "Adaptive batching" guide
(docs.bentoml.com/en/latest/get-started/adaptive-batching.html): one service, one worker, an
``onnxruntime.InferenceSession`` made in ``__init__``, and one batchable endpoint that takes
``np.ndarray`` windows stacked along axis 0 (``batch_dim=0``: BentoML's dispatcher concatenates
the requests' arrays, calls the method once, and splits the output back along axis 0).
``max_batch_size=256`` (our service's ``RNNOPS_FORECAST_MAX_BATCH``) and ``max_latency_ms=1000``
(the guide's example). A request is ``{"contexts": [window]}`` on ``POST /forecast``: the same
bytes our ``/forecast`` takes for one window in a list. The model's recurrent state inputs
(``h0``, ``c0``: ``[layers, B, hidden]``) start at zeros, as our service starts a window.

    PEER_ONNX=model.onnx PEER_THREADS=1 bentoml serve bentoml_peer_service:Forecaster --port 3000
"""

from __future__ import annotations

import os

import bentoml
import numpy as np
import onnxruntime as ort


@bentoml.service(name="forecaster-batching", workers=1, traffic={"timeout": 60})
class Forecaster:
    def __init__(self) -> None:
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("PEER_THREADS", "1"))
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(os.environ["PEER_ONNX"], so, providers=["CPUExecutionProvider"])
        self.states = [(i.name, i.shape) for i in self.sess.get_inputs() if i.name != "x"]

    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=256, max_latency_ms=1000)
    def forecast(self, contexts: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(contexts, dtype=np.float32)
        feeds = {"x": x, **{n: np.zeros((s[0], len(x), s[2]), np.float32) for n, s in self.states}}
        return self.sess.run(["forecast"], feeds)[0]
