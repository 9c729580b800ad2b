#!/usr/bin/env bash
# The main job end to end on the embedded defaults (sqlite:///mlflow.db in this folder):
# train a char model, a forecaster and a global panel forecaster (M4 Hourly, 414 series) on the
# quick presets, export them (TorchScript + ONNX, parity gates), register and promote them to
# `champion`, run a batch job over the M4 panel, then serve all three with BentoML.
# RNNOPS_DEMO_PANEL_BUDGET=SECONDS shortens the panel model's training (default: the quick
# preset's 300 s; at 120 s on a busy 2-core machine it was worse than the seasonal naive baseline).
set -euo pipefail
export RNNOPS_DATA_DIR="${RNNOPS_DATA_DIR:-}"
[ -n "$RNNOPS_DATA_DIR" ] && [ ! -d "$RNNOPS_DATA_DIR" ] && unset RNNOPS_DATA_DIR  # download instead
PORT="${PORT:-3000}"
DEMO=build/demo  # the batch job's files and a /forecast body (gitignored)

run_id() { sed -n 's/^run id: //p' | tail -n 1; }

echo "== 1/5 train: char model (tinyshakespeare, quick preset, ~3 min)"
CHAR_RUN=$(rnnops train char --data tinyshakespeare --preset quick | tee /dev/stderr | run_id)
echo "== 2/5 train: forecaster (ETTh1, M, lookback 96, horizon 96, quick preset, ~2.5 min)"
FC_RUN=$(rnnops train forecast --data etth1 --preset quick | tee /dev/stderr | run_id)
echo "== 3/5 train: panel forecaster (M4 Hourly, one GRU over 414 series, horizon 48, quick preset, ~6 min)"
PANEL_RUN=$(rnnops train forecast --data m4-hourly --preset quick \
  ${RNNOPS_DEMO_PANEL_BUDGET:+--time-budget "$RNNOPS_DEMO_PANEL_BUDGET"} | tee /dev/stderr | run_id)

echo "== 4/5 export + register + promote"
rnnops export "$CHAR_RUN" --register --promote
rnnops export "$FC_RUN" --register --promote
rnnops export "$PANEL_RUN" --register --promote   # registered as panel-forecaster
rnnops registry list

echo "== 5/5 batch job: forecast the 48 hours after every M4 series ($DEMO/)"
python scripts/demo_panel.py "$DEMO"
rnnops forecast --model panel-forecaster@champion --input "$DEMO/m4-hourly.csv" \
  --id-column id --date-column timestamp --output "$DEMO/m4-forecasts.csv"
head -n 3 "$DEMO/m4-forecasts.csv"

echo "== serve on http://127.0.0.1:$PORT (Ctrl-C to stop)"
echo "   open the playground: http://127.0.0.1:$PORT/playground   (generate, forecast a series, watch the server)"
echo "   or try:"
echo "   curl -N -X POST localhost:$PORT/generate -H 'content-type: application/json' -d '{\"prompt\": \"ROMEO:\", \"max_chars\": 200}'"
echo "   curl localhost:$PORT/forecast -H 'content-type: application/json' -d @$DEMO/forecast-H1.json   # one M4 series"
echo "   mlflow ui --backend-store-uri sqlite:///mlflow.db   # the runs, models and aliases"
exec rnnops serve --models char-rnn@champion,forecaster@champion,panel-forecaster@champion --port "$PORT"
