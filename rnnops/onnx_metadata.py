"""Reading an ``.onnx`` file's metadata: its raw ``metadata_props`` and the decoded ``rnnops.*`` entries.

The shared core, because several stages read it: the registry (what a version is, and what a
resolved reference is: :mod:`rnnops.registry.resolve`), export (the playground's sample,
:mod:`rnnops.export.sample`), tests.
No torch, no MLflow. Read with onnxruntime (which serving has); the ``onnx`` package is the
fallback for an install without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rnnops.contract import decode_metadata
from rnnops.errors import RnnopsError
from rnnops.model_file_checks import check_model_file


def metadata_props(path: Path) -> dict[str, str]:
    """The raw ``metadata_props`` of an ONNX file (all keys, JSON strings as stored)."""
    check_model_file(path)  # an untrusted file: verified before onnxruntime (or onnx) opens it
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise RnnopsError(
                f"{path}: onnxruntime cannot load it (not a loadable ONNX model): {str(exc).splitlines()[0]}"
            ) from None
        return dict(sess.get_modelmeta().custom_metadata_map)
    try:
        import onnx
    except ImportError:
        raise RnnopsError("reading ONNX metadata needs onnxruntime: pip install 'rnnops[serve]'") from None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise RnnopsError(f"{path} is not a readable ONNX model: {exc}") from None
    return {p.key: p.value for p in model.metadata_props}


# The decoded ``rnnops.*`` metadata of a file: kind, cell, state, vocab, ... (rnnops.contract.META_KEYS)
Metadata = dict[str, Any]


def read_metadata(path: Path) -> Metadata:
    """The ``rnnops.*`` metadata of an ONNX file, decoded (prefix stripped, JSON values parsed)."""
    try:
        return decode_metadata(metadata_props(path))
    except ValueError as exc:
        raise RnnopsError(f"{path} carries malformed rnnops metadata (values must be JSON): {exc}") from None
