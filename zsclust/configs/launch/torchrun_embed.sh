#!/bin/bash
# Multi-node embedding with torchrun, run on every node (NODE_RANK=0..NNODES-1, MASTER_ADDR = node 0):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash experiments/launch/torchrun_embed.sh vit_base_patch16_224.dino imagenet
# On CPUs: ACCELERATOR=cpu GPUS=2 bash experiments/launch/torchrun_embed.sh ENCODER DATASET [zsclust embed options ...]
# Lightning reads the ranks torchrun sets; the cache dir must be shared by all nodes.
set -euo pipefail
ENCODER=${1:-vit_base_patch16_224.dino}
DATASET=${2:-imagenet}
shift 2 || shift $#
GPUS=${GPUS:-$(nvidia-smi -L | wc -l)}   # processes per node
torchrun --nnodes "${NNODES:-1}" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$GPUS" \
         --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
         -m zsclust embed --encoder "$ENCODER" --dataset "$DATASET" --split test --no-progress \
         --accelerator "${ACCELERATOR:-gpu}" --devices "$GPUS" --num-nodes "${NNODES:-1}" \
         --cache-dir "${ZSCLUST_CACHE_DIR:-/shared/zsclust/embeddings}" "$@"
