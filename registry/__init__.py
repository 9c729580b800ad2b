"""rnnops registry stage: the MLflow Model Registry with gated aliases and verified resolve.

- ``api``: register exported runs, promote (gate + history), rollback, list, show;
- ``resolve``: ``char-rnn@champion`` -> a cached, sha256-verified local ONNX + its metadata;
- ``bento``: pull a verified version into the BentoML model store;
- ``cli``: ``rnnops registry ...``.

Imports MLflow (and onnxruntime to read metadata), never torch: serving imports this package.
Nothing is imported here, so ``import rnnops.registry.resolve`` stays light. See docs/registry.md.
"""
