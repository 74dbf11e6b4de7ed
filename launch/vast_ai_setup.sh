#!/usr/bin/env bash
# Set up a Vast.ai (or any CUDA 12) GPU box and start FLAG-TRADER training in the background.
#
#   git clone <this repo> && cd himari-jax && bash launch/vast_ai_setup.sh
#
# Settings come from the environment (defaults in brackets):
#   CONFIG     config file and variant         [configs/flag_trader.py:seed]
#   WORKDIR    run folder on persistent disk   [/workspace/himari_runs/<variant>]
#   DATA       training data: a bundled name (btc_usdt_1h_2020_2024), a CSV path, an http(s) URL,
#              or binance:SYMBOL:START:END (e.g. binance:ETHUSDT:2021-01:2024-12)   [bundled BTC]
#   EXTRA      more flags for launch/train.py, e.g. "--config.train.num_epochs=20"
#   REQUIRE_GPU=0 lets the script go on without a GPU (CPU training; slow).
# Re-running the script, or the on-start hook it writes, resumes from the latest checkpoint.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
config=${CONFIG:-configs/flag_trader.py:seed}
variant=${config##*:}
workdir=${WORKDIR:-/workspace/himari_runs/$variant}
data=${DATA:-}
extra=${EXTRA:-}
mkdir -p "$workdir"

echo "== 1/4 GPU"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L; then
  jax_extra="cuda12"
elif [ "${REQUIRE_GPU:-1}" = "1" ]; then
  echo "No NVIDIA GPU found (nvidia-smi failed). Set REQUIRE_GPU=0 to train on the CPU anyway." >&2
  exit 1
else
  echo "No GPU: installing the CPU build of JAX."
  jax_extra=""
fi

echo "== 2/4 install"
if [ ! -d .venv ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[plot${jax_extra:+,$jax_extra}]"
python -c "import jax; print('JAX', jax.__version__, 'devices:', jax.devices())"

echo "== 3/4 data"
data_flag=()
case "$data" in
  "") ;;
  http://*|https://*)
    mkdir -p "$workdir/data"
    curl -fL --retry 3 -o "$workdir/data/train.csv" "$data"
    data_flag=(--config.data.train="$workdir/data/train.csv") ;;
  binance:*)
    IFS=: read -r _ symbol start end <<<"$data"
    python launch/download_data.py --symbol="$symbol" --start="$start" --end="$end" \
      --output="$workdir/data/$symbol.csv" --cache_dir="$workdir/data/archives"
    data_flag=(--config.data.train="$workdir/data/$symbol.csv") ;;
  *) data_flag=(--config.data.train="$data") ;;
esac

echo "== 4/4 train (background, restarts and resumes until it finishes)"
runner="$workdir/run_training.sh"
{
  echo '#!/usr/bin/env bash'
  echo "cd $(printf '%q' "$repo") && . .venv/bin/activate"
  echo "until python launch/train.py --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") \\"
  echo "    ${data_flag[*]+$(printf '%q ' "${data_flag[@]}")}$extra; do"
  echo '  echo "training exited with status $?; resuming from the latest checkpoint in 30 s"; sleep 30'
  echo 'done'
  echo "touch $(printf '%q' "$workdir/DONE")"
} >"$runner"
chmod +x "$runner"
if [ -f "$workdir/DONE" ]; then
  echo "$workdir/DONE exists: this run has finished. Remove it to train again."
else
  nohup "$runner" >>"$workdir/train.log" 2>&1 &
  echo "started (pid $!), log: $workdir/train.log"
fi

cat <<MSG

Watch progress:
  tail -f $workdir/train.log
  pip install tensorboard && tensorboard --logdir $workdir/tensorboard --bind_all --port 6006
After a pre-emption, the instance's on-start script should be:
  nohup $runner >> $workdir/train.log 2>&1 &
(paste it into the Vast.ai template's "On-start script" field); training resumes where it stopped.
When it is done, backtest the best checkpoint:
  python launch/backtest.py --checkpoints=$workdir
MSG
