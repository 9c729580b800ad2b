"""The two things the registry needs from an ``.onnx`` file: its sha256 and its ``rnnops.*`` metadata.

No torch, no MLflow. Metadata is read with onnxruntime (which serving has); the ``onnx`` package
is the fallback for an install without it.
"""

from __future__ import annotations

from pathlib import Path

from rnnops.contract import ONNX_FILE, decode_metadata  # noqa: F401  (ONNX_FILE: re-exported for the registry)
from rnnops.errors import RnnopsError
from rnnops.model_file_checks import check_model_file
from rnnops.util import sha256_file  # noqa: F401  (the registry's callers hash through here)


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
            raise RnnopsError(f"{path}: onnxruntime cannot load it (not a loadable ONNX model): {str(exc).splitlines()[0]}") from None
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


def read_metadata(path: Path) -> dict:
    """The ``rnnops.*`` metadata of an ONNX file, decoded (prefix stripped, JSON values parsed)."""
    try:
        return decode_metadata(metadata_props(path))
    except ValueError as exc:
        raise RnnopsError(f"{path} carries malformed rnnops metadata (values must be JSON): {exc}") from None
