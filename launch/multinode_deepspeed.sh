#!/usr/bin/env bash
# Multi-node with the deepspeed launcher over pdsh (apt install pdsh on every node).
#   bash launch/multinode_deepspeed.sh launch/hostfile --config launch/recipes/pretrain_cruller_base_idl.yaml
# The launcher forwards only some variables to remote ranks: list the rest in ./.deepspeed_env
# (one VAR=value per line), e.g. NCCL_SOCKET_IFNAME, HF_HOME.
set -euo pipefail
HOSTFILE=${1:?usage: multinode_deepspeed.sh HOSTFILE [pixparse flags]}
shift
MASTER=$(grep -v '^#' "$HOSTFILE" | awk 'NF {print $1; exit}')
deepspeed --hostfile "$HOSTFILE" --launcher pdsh --master_addr "$MASTER" --master_port "${MASTER_PORT:-29500}" \
  launch/train.py --deepspeed_config "${DS_CONFIG:-ds_configs/zero2_bf16.json}" \
  --train.resume auto "$@"
