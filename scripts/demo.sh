#!/usr/bin/env bash
# The main job end to end on the embedded defaults (sqlite:///mlflow.db in this folder):
# train a char model and a forecaster on the quick presets, export both (TorchScript + ONNX,
# parity gate), register and promote them to `champion`, then serve them with BentoML.
set -euo pipefail
export RNNOPS_DATA_DIR="${RNNOPS_DATA_DIR:-}"
[ -n "$RNNOPS_DATA_DIR" ] && [ ! -d "$RNNOPS_DATA_DIR" ] && unset RNNOPS_DATA_DIR  # download instead
PORT="${PORT:-3000}"

run_id() { sed -n 's/^run id: //p' | tail -n 1; }

echo "== 1/4 train: char model (tinyshakespeare, quick preset, ~3 min)"
CHAR_RUN=$(rnnops train char --data tinyshakespeare --preset quick | tee /dev/stderr | run_id)
echo "== 2/4 train: forecaster (ETTh1, M, lookback 96, horizon 96, quick preset, ~2.5 min)"
FC_RUN=$(rnnops train forecast --data etth1 --preset quick | tee /dev/stderr | run_id)

echo "== 3/4 export + register + promote"
rnnops export "$CHAR_RUN" --register --promote
rnnops export "$FC_RUN" --register --promote
rnnops registry list

echo "== 4/4 serve on http://127.0.0.1:$PORT (Ctrl-C to stop)"
echo "   open the playground: http://127.0.0.1:$PORT/playground   (generate, forecast, watch the server)"
echo "   or try:"
echo "   curl -N -X POST localhost:$PORT/generate -H 'content-type: application/json' -d '{\"prompt\": \"ROMEO:\", \"max_chars\": 200}'"
echo "   mlflow ui --backend-store-uri sqlite:///mlflow.db   # the runs, models and aliases"
exec rnnops serve --models char-rnn@champion,forecaster@champion --port "$PORT"
