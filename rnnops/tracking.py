"""Connect to MLflow (tracking + registry) and fail fast, with one clear line, when it is away.

Shared by training, export, registry and serving; imports MLflow only, never torch.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request

from rnnops import settings
from rnnops.errors import RnnopsError

# MLflow retries an unreachable server for minutes by default; a CLI should say so at once.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def connect(check: bool = True) -> str:
    """Point MLflow at ``MLFLOW_TRACKING_URI`` (or the embedded sqlite store) and return the URI.

    For an HTTP server, ``check`` pings its ``/health`` endpoint first so that an unreachable
    server is one clear error instead of minutes of retries.
    """
    import mlflow

    uri = settings.tracking_uri()
    if check and uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise RnnopsError(
                f"MLflow tracking server {uri} is unreachable ({reason}); start it "
                "(`mlflow server --host 127.0.0.1 --port 5000`) or unset MLFLOW_TRACKING_URI "
                "to use the embedded sqlite:///mlflow.db"
            ) from None
    mlflow.set_tracking_uri(uri)
    # The registry follows the tracking URI unless the user set MLFLOW_REGISTRY_URI. MLflow's
    # set_registry_uri also writes that variable into os.environ; left there, a later connect()
    # (after MLFLOW_TRACKING_URI changed, in a long-lived process or a test session) would take
    # it for the user's and keep talking to the old registry. So only the user's value stays.
    user_registry = os.environ.get("MLFLOW_REGISTRY_URI")
    mlflow.set_registry_uri(user_registry or uri)
    if user_registry is None:
        os.environ.pop("MLFLOW_REGISTRY_URI", None)
    return uri
