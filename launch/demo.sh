#!/usr/bin/env bash
# The built-in default: render 32 synthetic pages with text legible at the model's 128x96 input,
# pretrain cruller_tiny to read them on 2 CPU ranks (DeepSpeed ZeRO-2, fp32), evaluate at every
# interval end, and print at the end how much the model's loss depends on the page it is shown
# (image_gap) and its character error rate.
# On a GPU machine, drop DS_ACCELERATOR and set --num_gpus to the GPU count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
SHARDS=${SHARDS:-runs/demo_pages}
if [ ! -f "$SHARDS/page-000007.tar" ]; then
  # Fonts of 7-10% of the page height: 9-13 px lines once the page is fit into 128x96.
  python -m pixparse.app.synth --output_dir "$SHARDS" --num_shards 8 --samples_per_shard 4 \
    --font_size "[0.07, 0.1]" --prefix page
fi
EXPERIMENT="demo-$(date +%Y%m%d-%H%M%S)"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# fp32: CPUs without native bf16 emulate it several times slower. A constant LR: the decoder first
# learns the pages' text, and only then the pixels that tell the pages apart (image_gap ~0 for a
# few hundred steps, then rising); a decaying LR over a short run would end inside that plateau.
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py \
  --deepspeed_config ds_configs/zero2_fp32.json \
  --data.train.source "$SHARDS/page-{000000..000007}.tar" --data.train.shuffle_buffer 0 --data.train.page_sampling first \
  --data.train.batch_size 8 --data.train.num_samples 2560 --data.train.num_workers 1 \
  --data.eval.source "$SHARDS/page-{000000..000007}.tar" --data.eval.batch_size 16 --data.eval.num_workers 0 \
  --task.model_name cruller_tiny --task.opt.learning_rate 2e-3 --task.opt.schedule constant \
  --task.num_warmup_intervals 0 --task.num_intervals 5 \
  --train.output_dir runs --train.experiment "$EXPERIMENT" --train.tensorboard true \
  --train.log_every_n_steps 32 "$@"
python - "runs/$EXPERIMENT/metrics.jsonl" <<'PY'
import json, sys
evals = [r for r in map(json.loads, open(sys.argv[1])) if "eval/image_gap" in r]
if evals:
    r = evals[-1]
    print(f"step {r['step']}: image_gap {r['eval/image_gap']:.3f} nats/token (loss {r['eval/loss']:.3f} with each "
          f"page's own image, {r['eval/loss'] + r['eval/image_gap']:.3f} with another page's), "
          f"CER {r.get('eval/cer', float('nan')):.3f} on {int(r['eval/num_samples'])} pages")
PY
