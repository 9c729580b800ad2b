"""rnnops export stage: TorchScript + ONNX with carried state, a parity gate, onnxruntime variants.

Modules, one job each:

- ``pipeline``: :func:`export_run` (a run in, files + MLflow logging + tags out) and the stages;
- ``wrappers``: the explicit-state inference modules TorchScript and ONNX are made from;
- ``torchscript``: script + freeze; ``onnx_export``: the ONNX contract (exporters, metadata);
- ``dynamo_ops``: custom ops that keep time dynamic under the torch.export-based exporter;
- ``parity``: eager vs TorchScript vs onnxruntime on a grid of cases, the gate;
- ``ort_tools``: onnxruntime sessions, optimised graph, int8; ``quality``: int8 quality/speed;
- ``cli``: ``rnnops export``.

See docs/export.md.
"""
