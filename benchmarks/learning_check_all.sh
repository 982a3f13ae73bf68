#!/usr/bin/env bash
# Learning checks of every downstream task on real data from DATA (../shared/data): each task is
# fine-tuned from scratch on a few real documents on 2 CPU ranks (DeepSpeed, ZeRO stage $ZERO,
# fp32), then the eval app scores its last checkpoint on the same documents:
#   cord    8 SROIE receipts in the CORD layout (nested groups, a list)   -> field_f1, ted_accuracy
#   docvqa  8 FUNSD question/answer pairs (2 questions x 4 forms)        -> anls
#   rvlcdip the 3 RVL-CDIP sample pages (generated class token)          -> accuracy
#   xent    the same 3 pages (linear head on pooled encoder features)    -> accuracy
# Every metric must come with a positive image_gap (the loss depends on the page).
#   bash benchmarks/learning_check_all.sh ../shared/data runs/learning_all [cord docvqa rvlcdip xent]
# The last line printed is one JSON object: cord_field_f1, docvqa_anls, rvlcdip_accuracy,
# xent_accuracy and each task's image_gap and fine-tuning seconds. ZERO=3 runs ZeRO-3;
# PRESET=pix2struct_tiny (or pali_tiny) another model family (xent: cruller only; pali trains twice
# the steps at LR 1e-3).
set -euo pipefail
DATA=$(cd "${1:?usage: learning_check_all.sh DATA_FOLDER OUT_DIR [TASKS...]}" && pwd)
mkdir -p "${2:?usage: learning_check_all.sh DATA_FOLDER OUT_DIR [TASKS...]}"
OUT=$(cd "$2" && pwd)
shift 2
TASKS=${*:-cord docvqa rvlcdip xent}
ZERO=${ZERO:-2}
PRESET=${PRESET:-cruller_tiny}
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}

write() {  # FORMAT INPUT NAME -> shards under $OUT/NAME/shards
  rm -rf "$OUT/$3"
  python -m pixparse.app.write "$1" "$2" "$OUT/$3/shards" --samples_per_shard 1 --verify true > /dev/null
}

# The family's schedule (as in learning_check.sh): pali's T5 text side spikes at 2e-3; at 1e-3 it
# needs twice the steps.
# INIT_FROM=<checkpoint or export>: fine-tune a pretrained reader instead of PRESET from scratch
# (IMAGE_SIZE="[H, W]" gives it another input size).
source benchmarks/model_flags.sh  # MODEL flags and FAMILY (PRESET, or INIT_FROM and IMAGE_SIZE)

check() {  # NAME TASK NUM_SAMPLES LR [train flags...]: fine-tune, evaluate -> $OUT/NAME/metrics.json
  local name=$1 task=$2 samples=$3 lr=$4
  shift 4
  if [ "$FAMILY" = pali ]; then samples=$(( samples * 2 )) lr=1e-3; fi
  local shards
  shards=$(python -c "import glob, sys; print('::'.join(sorted(glob.glob(sys.argv[1]))))" "$OUT/$name/shards/*.tar")
  local port
  port=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  local start
  start=$(date +%s)
  # Constant LR, no warmup, no shuffle buffer: few documents, seen in order (see learning_check.sh).
  deepspeed --num_gpus 2 --master_port "$port" launch/train.py \
    --deepspeed_config "ds_configs/zero${ZERO}_fp32.json" \
    --task.name "$task" "${MODEL[@]}" \
    --data.train.source "$shards" --data.train.batch_size 4 --data.train.num_workers 1 \
    --data.train.num_samples "$samples" --task.num_intervals 1 --data.train.shuffle_buffer 0 \
    --task.opt.learning_rate "$lr" --task.opt.schedule constant --task.num_warmup_intervals 0 \
    --train.output_dir "$OUT/$name/runs" --train.experiment "$name" --train.keep_last_k 1 \
    --train.log_every_n_steps 100 "$@" > "$OUT/$name/train.log" 2>&1 \
    || { tail -n 30 "$OUT/$name/train.log"; exit 1; }
  local took=$(( $(date +%s) - start ))
  python -m pixparse.app.eval --task.name "$task" \
    --data.eval.source "$shards" --data.eval.batch-size 8 --data.eval.num-workers 1 \
    --eval.checkpoint-path "$OUT/$name/runs/$name/checkpoints" --output-dir "$OUT/$name/eval" \
    | tail -n 1 | python -c "import json, sys; m = json.load(sys.stdin); m['train_s'] = $took; print(json.dumps(m))" \
    > "$OUT/$name/metrics.json"
  echo "$name ($task, $PRESET, ZeRO-$ZERO): $(cat "$OUT/$name/metrics.json")"
}

for t in $TASKS; do
  case $t in
    cord)
      rm -rf "$OUT/cord_data"
      python benchmarks/learning_data.py cord "$DATA/sroie" "$OUT/cord_data" > /dev/null
      write cord "$OUT/cord_data" cord
      check cord finetune_cord 4800 2e-3 --task.max_length 256 ;;
    docvqa)
      rm -rf "$OUT/docvqa_data"
      python benchmarks/learning_data.py docvqa "$DATA/funsd_kv_pairs" "$DATA/funsd" "$OUT/docvqa_data" > /dev/null
      write docvqa "$OUT/docvqa_data" docvqa
      check docvqa finetune_docvqa 4800 2e-3 --task.max_length 64 ;;
    rvlcdip)
      write rvl_cdip "$DATA/rvl_cdip_sample" rvlcdip
      check rvlcdip finetune_rvlcdip 1600 2e-3 --task.max_length 16 ;;
    xent)
      write rvl_cdip "$DATA/rvl_cdip_sample" xent
      check xent finetune_xent 800 2e-3 --task.max_length 16 ;;
    *) echo "unknown task $t (cord docvqa rvlcdip xent)"; exit 2 ;;
  esac
done

python - "$OUT" $TASKS <<'EOF'
import json, os, sys

out, tasks = sys.argv[1], sys.argv[2:]
key = {"cord": "field_f1", "docvqa": "anls", "rvlcdip": "accuracy", "xent": "accuracy"}
summary = {}
for t in tasks:
    with open(os.path.join(out, t, "metrics.json")) as f:
        m = json.load(f)
    summary[f"{t}_{key[t]}"] = m[key[t]]
    summary[f"{t}_image_gap"] = round(m["image_gap"], 4)
    summary[f"{t}_train_s"] = m["train_s"]
print(json.dumps(summary))
EOF
