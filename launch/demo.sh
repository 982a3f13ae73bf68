#!/usr/bin/env bash
# The built-in default: pretrain a reader from scratch on 2 CPU ranks (DeepSpeed, fp32) on a
# stream of freshly rendered text lines (render:lines: a new text every sample, nothing to memorize),
# evaluate at every interval end on 100 held-out lines of another seed, then print the held-out CER
# and 5 unseen lines as truth against what the model reads. No download.
# On a GPU machine, drop DS_ACCELERATOR and set --num_gpus to the GPU count.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
OUT=${OUT:-runs}  # where the run folder goes
HELDOUT=${HELDOUT:-$OUT/demo_heldout}
SAMPLES=${SAMPLES:-57600}
if [ ! -f "$HELDOUT/heldout-000001.tar" ]; then
  # Half the lines words, numbers, dates and amounts; half random characters.
  python -m pixparse.app.synth --output_dir "$HELDOUT" --render render:lines --prefix heldout \
    --num_shards 2 --samples_per_shard 50 --seed 1234
fi
EXPERIMENT="demo-$(date +%Y%m%d-%H%M%S)"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
# A conv-stem reader of 1.1M parameters (cruller_reader_tiny) with an auxiliary CTC loss on its
# image tokens; batch 24 per rank, LR 2.5e-3 after a short warmup, decayed over the last 20% of
# the samples (wsd). The batch and LR were chosen by measurement (docs/reading.md, "The demo").
# ZeRO stage 0 (each rank holds the whole model and optimizer, gradients all-reduced): sharding
# 1.1M parameters saves nothing, and stage 0 trains this reader about 20% faster than ZeRO-2 on
# 2 CPU ranks (docs/reading.md).
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py \
  --deepspeed_config ds_configs/zero0_fp32.json \
  --data.train.source render:lines --data.train.resampled true --data.train.shuffle_buffer 0 \
  --data.train.batch_size 24 --data.train.num_samples $((SAMPLES / 4)) --data.train.num_workers 1 \
  --data.eval.source "$HELDOUT/heldout-{000000..000001}.tar" --data.eval.batch_size 50 --data.eval.num_workers 0 \
  --task.name read_pretrain --task.model_name cruller_reader_tiny --task.ctc_weight 1.0 \
  --task.opt.learning_rate 2.5e-3 --task.opt.schedule wsd --task.num_warmup_intervals 0.3 \
  --task.num_intervals 4 --train.output_dir "$OUT" --train.experiment "$EXPERIMENT" --train.tensorboard true \
  --train.log_every_n_steps 100 "$@"
python -m pixparse.app.eval --task.name read_pretrain --data.eval.source "$HELDOUT/heldout-{000000..000001}.tar" \
  --data.eval.batch-size 50 --data.eval.num-workers 0 --eval.checkpoint-path "$OUT/$EXPERIMENT/checkpoints" \
  --output-dir "$OUT/$EXPERIMENT/eval" > "$OUT/$EXPERIMENT/eval.out"
python - "$OUT/$EXPERIMENT/eval.out" <<'PY'
import json, sys

metrics = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
records = [json.loads(line) for line in open(metrics["predictions"])]
print(f"held-out lines never trained on: CER {metrics['cer']:.3f}, {metrics['exact_match']:.0%} read exactly, "
      f"image_gap {metrics.get('image_gap', 0.0):.2f} nats/token ({len(records)} lines)")
for r in records[:5]:
    print(f"  truth {r['reference']!r:22} read {r['prediction']!r}")
PY
