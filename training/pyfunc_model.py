"""MLflow "models from code" entry point for rnnops models (no pickled code).

MLflow copies this file next to the weights and config; loading it rebuilds the torch model.
``predict``: char models take a DataFrame with a ``prompt`` column (and optional
``max_chars``) and return generated text; forecasters take one window as a 2-D array
``[T, F]`` of raw values and return ``[horizon, targets]``.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class RnnopsModel(PythonModel):
    def load_context(self, context):
        from pathlib import Path

        from rnnops.training.logged_model import model_from_files

        self.model, self.spec = model_from_files(Path(context.artifacts["config"]).parent)

    def predict(self, context, model_input, params=None):
        import torch

        if self.spec["kind"] == "char":
            from rnnops.training.sampling import generate

            rows = model_input.to_dict("records")
            return [
                generate(self.model, self.spec["vocab"], r["prompt"], int(r.get("max_chars") or 200), seed=0)
                for r in rows
            ]
        if self.spec["kind"] == "panel":
            raise ValueError(
                "a panel model forecasts windows of a panel: use rnnops.training.panel_train.forecast "
                "(the pyfunc predict takes single-series forecasters)"
            )
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))[None]
        with torch.no_grad():
            y, _ = self.model(x)
        return y[0].numpy()


mlflow.models.set_model(RnnopsModel())
