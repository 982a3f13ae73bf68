#!/usr/bin/env bash
# torchrun instead of the deepspeed launcher (same script, same flags). Single node:
#   bash launch/torchrun.sh 8 --config launch/recipes/pretrain_cruller_base_idl.yaml
# Multi-node: run on every node with NNODES, NODE_RANK and MASTER_ADDR set.
set -euo pipefail
NPROC=${1:?usage: torchrun.sh NPROC_PER_NODE [pixparse flags]}
shift
if [ "${NNODES:-1}" -eq 1 ]; then
  RDZV=(--standalone)
else
  RDZV=(--nnodes "$NNODES" --node_rank "$NODE_RANK" --master_addr "$MASTER_ADDR" --master_port "${MASTER_PORT:-29500}")
fi
torchrun "${RDZV[@]}" --nproc_per_node "$NPROC" launch/train.py \
  --deepspeed_config "${DS_CONFIG:-ds_configs/zero2_bf16.json}" "$@"
