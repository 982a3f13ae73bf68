#!/usr/bin/env bash
# Reading check: train a reader from scratch on 2 CPU ranks (DeepSpeed ZeRO-2, fp32) on a stream of
# freshly rendered text lines (render:lines, a new text every sample) mixed with real receipt lines,
# evaluate at every interval end on what it never trained on, plot CER against samples.
#
#   bash benchmarks/reading_check.sh OUT_DIR [PRESET] [training flags...]
#
# Held out: 400 rendered lines of their own seed (heldout_words: words, numbers, dates, amounts;
# heldout_random: random characters, which no language model can guess) and the lines of SROIE
# receipts 90-93 (real_lines; training mixes in the lines of receipts 0-79 only). The last line
# printed is one JSON object: heldout_cer, heldout_cer_random, real_lines_cer (case folded: SROIE's
# transcripts are upper case whatever the receipt prints), image_gap, samples, train_s, preset and
# checkpoint (a tag the eval app reads with --task.name read_pretrain).
# Curriculum: KIND=blocks (3-5 lines at 96x256, no real lines) with INIT_FROM=<a lines reader's
# checkpoint> and IMAGE_SIZE="[96, 256]" goes on from lines to blocks (the check's next stage);
# KIND=pages (384x288 synthetic pages, 40 held out) with a blocks reader and IMAGE_SIZE="[384, 288]"
# from blocks to pages (add --task.max_length 512: a page holds up to ~500 characters).
# Env: SAMPLES (default 102400), INTERVALS (evaluations, 10), CTC (auxiliary CTC weight; default 1 on
# lines, else 0), REAL_SHARE (share of real lines in training, 0.2), LONG_SHARE (share of
# lines of up to 40 characters rendered 512 wide, seen at half scale as long receipt lines are, 0), LR (2e-3 for
# cruller presets; 5e-4 for pali and pix2struct: at 2e-3 pali's T5 learns to ignore the image, and pix2struct's
# ViT over 8x8 patches did not start reading), SCHEDULE
# (wsd: constant after the warmup, then a linear decay to 0 over the last 20% of the samples; constant; cosine: decay
# to 0 by the last sample), RENDER_ARGS (render settings of every rendered source, training and held out, e.g.
# "chars=8&alphabet=digits"), DATA (the shared data, ../shared/data).
set -euo pipefail
OUT=$(mkdir -p "$1" && cd "$1" && pwd)
PRESET=${2:-cruller_reader_tiny}
shift $(( $# < 2 ? $# : 2 ))  # the rest: extra training flags
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
DATA=${DATA:-${PIXPARSE_TEST_DATA:-../shared/data}}
SAMPLES=${SAMPLES:-102400}
REAL_SHARE=${REAL_SHARE:-0.2}
LONG_SHARE=${LONG_SHARE:-0}
SCHEDULE=${SCHEDULE:-wsd}
INTERVALS=${INTERVALS:-10}
KIND=${KIND:-lines}
RENDER_ARGS=${RENDER_ARGS:-}
LABEL=$PRESET  # what the result calls the model
source benchmarks/model_flags.sh  # MODEL flags and FAMILY (PRESET, or INIT_FROM and IMAGE_SIZE)
if [ -n "${INIT_FROM:-}" ]; then LABEL="$PRESET+$KIND"; fi
LR=${LR:-$([ "$FAMILY" = cruller ] && echo 2e-3 || echo 5e-4)}
# CTC reads the image tokens left to right (pix2struct: its patch columns): one line only
CTC=${CTC:-$([ "$KIND" = lines ] && echo 1.0 || echo 0.0)}
DATA_DIR="$OUT/data_$KIND${RENDER_ARGS:+_$(echo "$RENDER_ARGS" | tr "=&" "-_")}"
HELD_PER_SHARD=$(case $KIND in lines) echo 100;; blocks) echo 25;; *) echo 10;; esac)  # x 2 shards x (words, random)

if [ ! -f "$DATA_DIR/heldout_random-000001.tar" ]; then
  rm -rf "$DATA_DIR"
  python -m pixparse.app.synth --output_dir "$DATA_DIR" --render "render:$KIND?${RENDER_ARGS:+$RENDER_ARGS&}random=0" --prefix heldout_words \
    --num_shards 2 --samples_per_shard "$HELD_PER_SHARD" --seed 1234 > /dev/null
  if [ "$KIND" = lines ]; then
    python -m pixparse.app.write sroie "$DATA/sroie" "$DATA_DIR" --prefix train_lines --max_samples 80 \
      --crop_lines true --samples_per_shard 500 > /dev/null
    python -m pixparse.app.write sroie "$DATA/sroie" "$DATA_DIR" --prefix real_lines --skip_samples 90 \
      --max_samples 4 --crop_lines true --samples_per_shard 50 > /dev/null
  fi
  python -m pixparse.app.synth --output_dir "$DATA_DIR" --render "render:$KIND?${RENDER_ARGS:+$RENDER_ARGS&}random=1" --prefix heldout_random \
    --num_shards 2 --samples_per_shard "$HELD_PER_SHARD" --seed 1234 > /dev/null
fi
HELDOUT="$DATA_DIR/heldout_words-{000000..000001}.tar::$DATA_DIR/heldout_random-{000000..000001}.tar"
if [ "$KIND" = lines ]; then
  NUM_TRAIN_REAL=$(ls "$DATA_DIR"/train_lines-*.tar | wc -l)
  REAL_PATTERN="$DATA_DIR/train_lines-{000000..$(printf %06d $((NUM_TRAIN_REAL - 1)))}.tar"
  NUM_REAL=$(ls "$DATA_DIR"/real_lines-*.tar | wc -l)
  HELDOUT="$HELDOUT::$DATA_DIR/real_lines-{000000..$(printf %06d $((NUM_REAL - 1)))}.tar"
  # long lines drawn at twice the width, so the model sees them at the scale of receipt lines
  TRAIN=(--data.train.source "render:lines${RENDER_ARGS:+?$RENDER_ARGS}::render:lines?width=512&chars=40::$REAL_PATTERN"
         --data.train.source_weights "[$(python -c "print(round(1 - $REAL_SHARE - $LONG_SHARE, 6))"), $LONG_SHARE, $REAL_SHARE]")
else
  TRAIN=(--data.train.source "render:$KIND${RENDER_ARGS:+?$RENDER_ARGS}")
fi

rm -rf "$OUT/runs" "$OUT/eval"
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
START=$(date +%s)
# A short warmup, then the LR schedule over the whole run; the held-out sets are read at every
# interval end.
deepspeed --num_gpus 2 --master_port "$PORT" launch/train.py \
  --deepspeed_config ds_configs/zero2_fp32.json \
  --task.name read_pretrain "${MODEL[@]}" --task.ctc_weight "$CTC" \
  "${TRAIN[@]}" --data.train.resampled true \
  --data.train.batch_size 16 --data.train.num_workers 1 --data.train.shuffle_buffer 64 \
  --data.train.num_samples $((SAMPLES / INTERVALS)) --task.num_intervals "$INTERVALS" \
  --data.eval.source "$HELDOUT" --data.eval.batch_size 100 --data.eval.num_workers 0 \
  --task.opt.learning_rate "$LR" --task.opt.schedule "$SCHEDULE" --task.num_warmup_intervals 0.3 \
  --train.output_dir "$OUT/runs" --train.experiment reader --train.keep_last_k 1 \
  --train.log_every_n_steps 200 "$@"
TRAIN_S=$(( $(date +%s) - START ))
CKPT="$OUT/runs/reader/checkpoints/$(cat "$OUT/runs/reader/checkpoints/latest")"
python -m pixparse.app.eval --task.name read_pretrain --data.eval.source "$HELDOUT" \
  --data.eval.batch-size 100 --data.eval.num-workers 0 --eval.checkpoint-path "$CKPT" \
  --output-dir "$OUT/eval" > "$OUT/eval.out"
READING_CHECK_COMMAND="$(env | grep -E '^(SAMPLES|INTERVALS|RENDER_ARGS|CTC|REAL_SHARE|LONG_SHARE|LR|SCHEDULE|KIND|INIT_FROM|IMAGE_SIZE)=' | tr '\n' ' ')bash benchmarks/reading_check.sh OUT_DIR $PRESET $*" \
  python - "$OUT" "$LABEL" "$CKPT" "$TRAIN_S" <<'PY'
import json, os, platform, subprocess, sys
from importlib.metadata import version

import jiwer

out, preset, ckpt, train_s = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
metrics = json.loads(open(f"{out}/eval.out").read().strip().splitlines()[-1])
records = [json.loads(line) for line in open(metrics["predictions"])]
rendered = [r for r in records if "/heldout_" in r["shard"]]
evals = [json.loads(line) for line in open(f"{out}/runs/reader/metrics.jsonl")]
config = json.load(open(f"{out}/runs/reader/ds_config.json"))
global_batch = config["train_batch_size"]
curve = [(r["step"] * global_batch, r["eval/heldout_words/cer"], r["eval/heldout_random/cer"],
          r.get("eval/real_lines/cer_nocase", float("nan"))) for r in evals if "eval/heldout_words/cer" in r]
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, name in enumerate(("held-out words", "held-out random", "real receipt lines (case folded)")[:2 + ("real_lines/cer" in metrics)]):
        ax.plot([c[0] for c in curve], [c[i + 1] for c in curve], marker="o", label=name)
    ax.set_xlabel("training samples"); ax.set_ylabel("CER"); ax.set_ylim(0, 1.05); ax.grid(alpha=0.3)
    ax.set_title(f"{preset}: reading unseen {'lines' if '+' not in preset else preset.split('+')[1]}"); ax.legend()
    fig.tight_layout(); fig.savefig(f"{out}/cer_vs_samples.png", dpi=120)
except ImportError:
    pass
for r in rendered[:3] + [r for r in records if "/real_lines" in r["shard"]][:2]:
    print(f"  truth {r['reference']!r:40} read {r['prediction']!r}")
result = {
    "heldout_cer": round(jiwer.cer([r["reference"] for r in rendered], [r["prediction"] for r in rendered]), 4),
    "heldout_cer_random": round(metrics["heldout_random/cer"], 4),
    "heldout_cer_words": round(metrics["heldout_words/cer"], 4),
    "heldout_exact_match": round(sum(r["reference"] == r["prediction"] for r in rendered) / len(rendered), 4),
    "real_lines_cer": round(metrics["real_lines/cer_nocase"], 4) if "real_lines/cer" in metrics else None,
    "real_lines_cer_cased": round(metrics["real_lines/cer"], 4) if "real_lines/cer" in metrics else None,
    "image_gap": round(metrics.get("image_gap", 0.0), 4),
    "samples": curve[-1][0] if curve else 0, "train_s": train_s, "preset": preset, "checkpoint": ckpt,
    "curve": [[c[0], round(c[1], 4), round(c[2], 4), None if c[3] != c[3] else round(c[3], 4)] for c in curve],
}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
record = {**result, "command": os.environ.get("READING_CHECK_COMMAND", ""), "cpu": cpu, "cpus": os.cpu_count(),
          "torch": version("torch"), "deepspeed": version("deepspeed"),
          "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
          "config": open(f"{out}/runs/reader/config.yaml").read()}
json.dump(record, open(f"{out}/reading_check.json", "w"), indent=1)
print(json.dumps(result))
PY
