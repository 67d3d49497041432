#!/usr/bin/env bash
# Multi-process training with torchrun (PyTorch DDP through mmengine).
# Usage: tools/dist_train.sh CONFIG NGPUS [train.py args...]
# Without CUDA the processes use the gloo backend on the CPU (see nat_mm/mm/runtime.py).
# NNODES, NODE_RANK, MASTER_ADDR and PORT configure multi-node runs.
set -euo pipefail
CONFIG=$1
NGPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

PYTHONPATH="$(dirname "$0")/..${PYTHONPATH:+:$PYTHONPATH}" \
exec torchrun \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NGPUS" \
    --master_port="$PORT" \
    "$(dirname "$0")/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
