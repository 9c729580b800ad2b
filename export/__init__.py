"""rnnops export stage: TorchScript + ONNX with carried state, a parity gate, onnxruntime variants.

Modules, one job each:

- ``pipeline``: :func:`export_run` (a run in, files + MLflow logging + tags out) and the stages;
- ``wrappers``: the explicit-state inference modules TorchScript and ONNX are made from;
- ``torchscript``: script + freeze; ``onnx_export``: the ONNX contract (exporters, metadata);
- ``dynamo_ops``: custom ops that keep time dynamic under the torch.export-based exporter;
- ``parity``: eager vs TorchScript vs onnxruntime on a grid of cases, the gate (and the int8 file's own);
- ``int8``: the fixed-scale int8 form of an LSTM / GRU / RNN file; ``quality``: its quality and speed;
- ``ort_tools``: onnxruntime sessions, the optimised graph, step timing;
- ``cli``: ``rnnops export``.

See docs/export.md.
"""
