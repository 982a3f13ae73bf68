#!/usr/bin/env bash
# One prepared GPU benchmark pass (for a lent GPU machine), most important first: on 2+ GPUs the
# engine's ZeRO-2/3 against DDP and FSDP2 on all of them (and 1, for scaling), with and without
# the DeepSpeed patches, and the ZeRO settings; model throughput/MFU/memory of cruller_base and
# cruller_large with synthetic data, ZeRO-2 vs ZeRO-3, activation checkpointing on/off; the
# engine against a plain loop and Seq2SeqTrainer on one GPU (bench_train.py); then the loader.
# Writes everything under ${OUT:-bench_out}/. No hub access needed:
# TOKENIZER (default: byte) may name a local SentencePiece .model for a realistic vocabulary
# (e.g. a copy of shared/data/tokenizers/mistral_tokenizer.model.v1 saved as tok/sp.model);
# DATA (shared/data) enables the loader part.
#   TOKENIZER=tok/sp.model bash benchmarks/gpu_bench.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_out}
mkdir -p "$OUT"
NGPU=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
run() {  # name, then pixparse flags
  local name=$1; shift
  deepspeed --num_gpus "$NGPU" --master_port "$((29500 + RANDOM % 1000))" launch/bench.py \
    --data.train.source none --data.train.num_samples 100000 --train.output_dir "$OUT/runs" \
    --task.tokenizer "${TOKENIZER:-byte}" --train.experiment "$name" "$@" 2>&1 | tee "$OUT/$name.log" | tail -16
}
TOK_FLAG=()
[ -n "${TOKENIZER:-}" ] && TOK_FLAG=(--tokenizer "$TOKENIZER")
if [ "$NGPU" -ge 2 ]; then
  python benchmarks/bench_train.py --world_size "$NGPU" --model cruller_base --batch_size 8 --steps 10 --warmup 3 \
    --rounds 1 --variants ddp_bf16,zero2_bf16,fsdp_bf16,zero3_bf16,zero2-unpatched_bf16,zero3-unpatched_bf16 \
    --out "$OUT" "${TOK_FLAG[@]}" 2>&1 | tee "$OUT/bench_train_world.log" | tail -10
  python benchmarks/bench_zero_settings.py --world_size "$NGPU" --model cruller_base --batch_size 8 --steps 10 \
    --warmup 3 --rounds 1 --dtype bf16 --out "$OUT" "${TOK_FLAG[@]}" 2>&1 | tee "$OUT/zero_settings.log" | tail -12
fi
for preset in cruller_base cruller_large; do
  for ds in zero2_bf16 zero3_bf16; do
    run "${preset}_${ds}" --deepspeed_config "ds_configs/$ds.json" --task.model_name "$preset" \
      --data.train.batch_size 16 --task.max_length 512 --synthetic_data true --steps 30 --warmup_steps 5
  done
  run "${preset}_zero2_bf16_ckpt" --deepspeed_config ds_configs/zero2_bf16.json --task.model_name "$preset" \
    --data.train.batch_size 16 --task.max_length 512 --synthetic_data true --steps 30 --warmup_steps 5 \
    --task.encoder_grad_checkpointing true --task.decoder_grad_checkpointing true
done
# What the engine costs against a plain loop and Seq2SeqTrainer on this GPU (bf16, one GPU):
# separate processes, then paired in one process with the per-phase split.
python benchmarks/bench_train.py --model cruller_base --batch_size 16 --steps 20 --warmup 5 --rounds 1 \
  --variants plain_bf16,zero2_bf16,zero3_bf16,trainer_bf16 --out "$OUT" "${TOK_FLAG[@]}" 2>&1 | tee "$OUT/bench_train.log" | tail -8
python benchmarks/bench_train.py --model cruller_base --batch_size 16 --steps 20 --warmup 5 --paired \
  --variants zero2_bf16,zero3_bf16 --out "$OUT" "${TOK_FLAG[@]}" 2>&1 | tee "$OUT/bench_train_paired.log" | tail -6
python benchmarks/bench_train.py --model cruller_base --batch_size 16 --steps 10 --warmup 3 --phases \
  --variants plain_bf16,zero2_bf16,zero3_bf16 "${TOK_FLAG[@]}" 2>&1 | tee "$OUT/bench_train_phases.log" | tail -4
if [ -d "${DATA:-../shared/data}/docbank_samples" ]; then
  python benchmarks/bench_loader.py --data "${DATA:-../shared/data}" --workers 8 --repeats 3 | tee "$OUT/loader.log" | tail -8
fi
grep -h '^{' "$OUT"/*.log > "$OUT/all.jsonl"
