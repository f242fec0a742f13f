#!/usr/bin/env bash
# The CUDA paths of the training engine on a lent GPU machine, in one go: float32, fp16 autocast
# with loss scaling and bf16 autocast training steps of a bert-base-sized random checkpoint
# (made there by its transformers), with and without gradient checkpointing, each with the
# caching allocator's peak memory; then a short fp16 run through the worker on every GPU
# visible (device pinning, and data parallelism when there are several).
#
#   scripts/gpu-check.sh BINARY [TORCH_VENV]     (BINARY built here; TORCH_VENV default /opt/torch/.venv)
#
# Prints the figures BENCHMARKS.md records under "CUDA".
set -euo pipefail
bin=$(realpath "$1")
venv=${2:-/opt/torch/.venv}
lib=$("$venv/bin/python" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$venv/bin/python" - "$work/models/bert-base" <<'PY'
import sys, torch, transformers
torch.manual_seed(0)
m = transformers.BertForSequenceClassification(transformers.BertConfig(num_labels=2))
m.save_pretrained(sys.argv[1])
import json, os
# a WordPiece vocabulary of the config's size: the engine reads ids, not words, here
with open(os.path.join(sys.argv[1], "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + [f"w{i}" for i in range(m.config.vocab_size - 104)]) + "\n")
print(f"bert-base: {sum(p.numel() for p in m.parameters())/1e6:.1f}M parameters")
PY
for seq in 128 512; do
  for prec in no fp16 bf16; do
    for ckpt in "" --gradient-checkpointing; do
      "$bin" bench train-step --models-dir "$work/models" --model bert-base --device cuda:0 \
        --batch-size 32 --seq-len $seq --steps 20 --mixed-precision $prec $ckpt | tail -n 3
    done
  done
done
n=$(nvidia-smi -L | wc -l)
"$bin" data demo --out "$work/data/datasets" >/dev/null
"$bin" train --models-dir "$work/models" --data-dir "$work/data" --model bert-base \
  --dataset demo-news --epochs 1 --batch_size 64 --mixed_precision fp16 --device cuda:0 --no-record \
  --output "$work/run" 2>&1 | tail -n 3
echo "GPUs visible: $n (a data-parallel check needs at least 2: submit \"gpus\": $n to a served instance)"
