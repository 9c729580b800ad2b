"""The MLServer peer for ``mlserver_oip.py``: a custom inference runtime serving the ONNX forecaster.

Runs inside MLServer, in MLServer's own virtualenv (``~/.cache/rnnops/peers/mlserver-venv``),
not in ours: it imports only MLServer, onnxruntime and numpy. Written as MLServer's "Custom
Inference Runtimes" guide (docs.seldon.ai/mlserver/user-guide/custom) shows it: a subclass of
``mlserver.MLModel`` whose ``load`` makes the model (an onnxruntime session on the file that
``parameters.uri`` in ``model-settings.json`` names, ``parameters.extra.threads`` intra-op
threads) and whose ``predict`` takes the decoded request and answers with MLServer's codecs
(``NumpyCodec``).

Why a custom runtime and not ``mlserver-mlflow`` on the registered model: the forecaster's ONNX
graph takes its recurrent state as inputs (``h0``, and ``c0`` for an LSTM: ``[layers, batch,
hidden]``), so MLflow's ``mlflow.onnx`` pyfunc needs them in every request, and MLServer's
adaptive batching merges every input of the batched requests along axis 0 (``mlserver/batching/
requests.py``: "TODO: Allow for other batch dimensions"). Merged along axis 0, the state tensors
of k requests become ``[k * layers, 1, hidden]``, which onnxruntime rejects, and the ``hn``
output would be split on the wrong axis. A runtime that takes only ``x`` and starts the state
at zeros (as our ``/forecast`` and ``/v2/.../infer`` do for a window) is what a user of MLServer
has to write for this model; it also keeps MLflow and its dependencies out of MLServer's
environment.

The request is OIP's: one FP32 input ``x`` of shape ``[B, T, F]``; the answer one FP32 output
``forecast`` ``[B, horizon, targets]``, the names and shapes our ``/v2/models/{name}/infer``
uses, so the same request bytes go to both servers.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxForecaster(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        extra = (params.extra if params else None) or {}
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(extra.get("threads", 1))
        so.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(params.uri, so, providers=["CPUExecutionProvider"])
        # state inputs ([layers, batch, hidden]): zeros sized to the batch, as a window starts
        self.states = [(i.name, i.shape) for i in self.sess.get_inputs() if i.name != "x"]
        self.output = self.sess.get_outputs()[0].name  # "forecast" (the ONNX contract's main output)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = np.ascontiguousarray(self.decode(payload.inputs[0], default_codec=NumpyCodec), dtype=np.float32)
        feeds = {"x": x, **{n: np.zeros((s[0], len(x), s[2]), np.float32) for n, s in self.states}}
        y = self.sess.run([self.output], feeds)[0]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=[NumpyCodec.encode_output(name=self.output, payload=y)],
        )
