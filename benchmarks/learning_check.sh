#!/usr/bin/env bash
# The receipt learning check: proves pixels, tokens, targets, generation, parsing and metrics
# together. Writes shards of the first 8 receipts of SROIE_FOLDER, fine-tunes PRESET on them on
# 2 CPU ranks (DeepSpeed ZeRO-2 fp32; cruller and pix2struct 1200 steps at LR 2e-3, pali 2400 at
# 1e-3), then scores the last checkpoint with the eval app on the
# same 8 receipts. Everything goes under OUT_DIR; the last line printed is the metrics JSON
# (field_f1, ted_accuracy, image_gap, ...).
#   bash benchmarks/learning_check.sh ../shared/data/sroie runs/learning_check [cruller_tiny]
# Extra training flags may follow the preset (e.g. --task.num_intervals 4). DECODE=fast|exact
# sets the image decode of both training and evaluation (default: the loader's default).
# INIT_FROM=<checkpoint or export> fine-tunes a pretrained reader instead of PRESET from scratch
# (IMAGE_SIZE="[H, W]" gives it another input size); SKIP=N takes receipts N..N+7 (disjoint sets).
# EVALS=N splits the run into N intervals and scores the 8 receipts after each: the last line then
# also holds `field_f1_curve` ([step, field_f1] per evaluation), `steps_to_field_f1`, the first
# step at which every field of every receipt was read, and `steps_to_field_f1_held`, the first from
# which every later evaluation read them all too (null if none; benchmarks/learning_curve.py).
# SAMPLES: training samples per half of the run (4800, pali 9600; at batch 4 on 2 ranks, 1200 and
# 2400 steps in all).
set -euo pipefail
SROIE=$(cd "${1:?usage: learning_check.sh SROIE_FOLDER OUT_DIR [PRESET] [train flags...]}" && pwd)
mkdir -p "${2:?usage: learning_check.sh SROIE_FOLDER OUT_DIR [PRESET] [train flags...]}"
OUT=$(cd "$2" && pwd)
PRESET=${3:-cruller_tiny}
shift $(( $# < 3 ? $# : 3 ))
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
rm -rf "$OUT/shards" "$OUT/runs" "$OUT/eval"
python -m pixparse.app.write sroie "$SROIE" "$OUT/shards" --samples_per_shard 1 --max_samples 8 \
  --skip_samples "${SKIP:-0}" --verify true
SHARDS="$OUT/shards/sroie-{000000..000007}.tar"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
START=$(date +%s)
# The family's schedule: the T5 text side of pali learns slower and spikes at 2e-3; at 1e-3 it
# memorizes by ~1500 steps and reads by 2400 (measured on these 8 receipts).
source benchmarks/model_flags.sh  # MODEL flags and FAMILY (PRESET, or INIT_FROM and IMAGE_SIZE)
if [ "$FAMILY" = pali ]; then SAMPLES=${SAMPLES:-9600} LR=1e-3; else SAMPLES=${SAMPLES:-4800} LR=2e-3; fi
# Constant LR, no decay: the decoder memorizes the 8 texts within ~300 steps and only then starts
# to read the page to tell them apart (image_gap 0 until ~500 steps, then rising); a decaying
# schedule over a short run ends inside that plateau.
EVALS=${EVALS:-0}
if [ "$EVALS" -gt 0 ]; then
  INTERVALS=(--task.num_intervals "$EVALS" --data.train.num_samples $((2 * SAMPLES / EVALS))
             --data.eval.source "$SHARDS" --data.eval.batch_size 8 --data.eval.num_workers 0)
else
  INTERVALS=(--task.num_intervals 2 --data.train.num_samples "$SAMPLES")
fi
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py \
  --deepspeed_config ds_configs/zero2_fp32.json \
  --task.name finetune_sroie "${MODEL[@]}" --task.max_length 256 \
  --data.train.source "$SHARDS" --data.train.batch_size 4 --data.train.num_workers 1 \
  "${INTERVALS[@]}" --data.train.shuffle_buffer 0 \
  --task.opt.learning_rate "$LR" --task.opt.schedule constant --task.num_warmup_intervals 0 \
  --train.output_dir "$OUT/runs" --train.experiment sroie --train.keep_last_k 1 \
  --train.log_every_n_steps 100 ${DECODE:+--data.train.decode "$DECODE"} "$@"
echo "fine-tuning took $(( $(date +%s) - START )) s"
python -m pixparse.app.eval --task.name finetune_sroie \
  --data.eval.source "$SHARDS" --data.eval.batch-size 8 --data.eval.num-workers 1 \
  --eval.checkpoint-path "$OUT/runs/sroie/checkpoints" --output-dir "$OUT/eval" \
  ${DECODE:+--data.eval.decode "$DECODE"} > "$OUT/eval.out"
if [ "$EVALS" -gt 0 ]; then
  python benchmarks/learning_curve.py "$OUT/eval.out" "$OUT/runs/sroie/metrics.jsonl"
else
  tail -n 1 "$OUT/eval.out"
fi
