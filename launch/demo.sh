#!/usr/bin/env bash
# The built-in default: write synthetic document shards, pretrain cruller_tiny on 2 CPU ranks
# with DeepSpeed ZeRO-2 (bf16) for a few hundred steps, print where logs and checkpoints are.
# On a GPU machine, drop DS_ACCELERATOR and set --num_gpus to the GPU count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
SHARDS=${SHARDS:-runs/demo_shards}
if [ ! -f "$SHARDS/synth-000007.tar" ]; then
  python -m pixparse.app.synth --output_dir "$SHARDS" --num_shards 8 --samples_per_shard 64
fi
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py \
  --deepspeed_config ds_configs/zero2_bf16.json \
  --data.train.source "$SHARDS/synth-{000000..000007}.tar" \
  --data.train.batch_size 8 --data.train.num_samples 1024 --data.train.num_workers 1 \
  --task.model_name cruller_tiny --task.opt.learning_rate 1e-3 --task.num_intervals 5 \
  --train.output_dir runs --train.tensorboard true \
  --train.log_every_n_steps 16 "$@"
