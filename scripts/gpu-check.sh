#!/usr/bin/env bash
# The CUDA path on a lent GPU machine, in one go (BENCHMARKS.md, "GPU"):
#   1. the GPU, and its matrix-product peak at float32, float16 and bfloat16 (PyTorch);
#   2. the fine-tuning step of a bert-base-sized random checkpoint (made there by its
#      transformers) at float32, fp16 autocast with loss scaling and bf16 autocast, at 128 and 512
#      tokens: `modalbench-worker bench train-step` and PyTorch + transformers eager
#      (scripts/bench/torch_step.py, the Trainer's step with fused AdamW), alternating, each with
#      the caching allocator's peak memory and the model FLOPs utilisation against the measured
#      peak; gradient checkpointing at 512 tokens; evaluation at 128 and 512;
#   3. the service on that machine: the slots it finds, and a run submitted with `gpus: 1` at
#      fp16, trained by its worker on the GPU slot (device pinning), to the end.
#
#   scripts/gpu-check.sh BIN_DIR [TORCH_PYTHON]
#     BIN_DIR holds modalbench and modalbench-worker built here; TORCH_PYTHON (default
#     /opt/torch/.venv/bin/python, else python3) is the PyTorch they run with.
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SMALL=1 rehearses it on a CPU with a small checkpoint;
#   GPU_CHECK_PARTS (default "steps eval service"), GPU_CHECK_PRECISIONS (default "no fp16 bf16")
#   and GPU_CHECK_REPS (repetitions at 128 tokens, default 2) narrow it.
#
# Each part reports and the next goes on if one fails; the exit status counts the failures.
set -uo pipefail
bin=$(realpath "$1")
py=${2:-/opt/torch/.venv/bin/python}
[ -x "$py" ] || py=$(command -v python3)
device=${GPU_CHECK_DEVICE:-cuda:0}
small=${GPU_CHECK_SMALL:-}
here=$(cd "$(dirname "$0")" && pwd)
lib=$("$py" -c 'import torch, os; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
server=
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
failures=0
part() { echo; echo "== $*"; }
failed() { echo "FAILED: $*"; failures=$((failures + 1)); }
t0=$(date +%s)

part "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
"$py" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
echo "libtorch: $lib"

part "checkpoint"
"$py" - "$work/models/bert-base" "$small" <<'PY' || failed "making the checkpoint"
import json, os, sys, torch, transformers
torch.manual_seed(0)
small = bool(sys.argv[2])
config = transformers.BertConfig(num_labels=2, **(dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128) if small else {}))
m = transformers.BertForSequenceClassification(config)
m.save_pretrained(sys.argv[1])
# a WordPiece vocabulary of the config's size: the engine reads ids, not words, here
with open(os.path.join(sys.argv[1], "vocab.txt"), "w") as f:
    f.write("\n".join(["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
                      + [f"w{i}" for i in range(m.config.vocab_size - 104)]) + "\n")
print(f"{config.num_hidden_layers} layers, hidden {config.hidden_size}: {sum(p.numel() for p in m.parameters())/1e6:.1f}M parameters")
PY

part "CUDA devices the worker sees"
n=$("$bin/modalbench-worker" devices) || failed "modalbench-worker devices"
echo "${n:-none}"
if [[ "$device" == cuda* && "${n:-0}" == 0 ]]; then
  ldd "$bin/modalbench-worker" | grep -E "torch|c10|not found"
  failed "the worker sees no CUDA device; nothing else is worth running"
  exit $failures
fi

precisions=${GPU_CHECK_PRECISIONS:-no fp16 bf16}
parts=${GPU_CHECK_PARTS:-steps eval service}
part "matrix-product peak (PyTorch, square products, GFLOP/s)"
declare -A peak
for prec in $precisions; do
  peak[$prec]=$("$py" "$here/bench/torch_step.py" --matmul-peak --device "$device" --precision $prec | sed -n 's/^peak_gflops=//p')
  echo "$prec: ${peak[$prec]}"
done

# value KEY < output: the number after KEY=
value() { sed -n "s/^$1=//p" | tail -n 1; }
flops=
ours() { # seq prec steps [extra...]
  local seq=$1 prec=$2 steps=$3; shift 3
  "$bin/modalbench-worker" bench train-step --models-dir "$work/models" --model bert-base --device "$device" \
    --batch-size 32 --seq-len "$seq" --steps "$steps" --mixed-precision "$prec" "$@"
}
theirs() { # seq prec steps [extra...]
  local seq=$1 prec=$2 steps=$3; shift 3
  "$py" "$here/bench/torch_step.py" "$work/models/bert-base" --device "$device" --batch 32 --seq "$seq" \
    --steps "$steps" --precision "$prec" "$@"
}
mfu() { # examples/s precision -> percent of the measured peak
  awk -v r="$1" -v f="$flops" -v p="${peak[$2]}" 'BEGIN { if (r == "" || f == "" || p == "") print "n/a"; else printf "%.1f%%", 100 * r * f / (p * 1e9) }'
}

if [[ " $parts " == *" steps "* ]]; then
  part "fine-tune step, batch 32 (examples/s; MFU against the peak of the step's precision)"
  for seq in 128 512; do
    flops=$(theirs $seq no 1 --flops --warmup 0 2>&1 | value flops_per_example)
    echo "sequence $seq: $flops FLOPs per example (forward and backward, torch.utils.flop_counter)"
    reps=${GPU_CHECK_REPS:-2}; steps=30
    [ "$seq" = 512 ] && { reps=1; steps=15; }
    for prec in $precisions; do
      for rep in $(seq $reps); do
        o=$(ours $seq $prec $steps 2>&1) || { echo "$o" | tail -n 5; failed "modalbench step $seq $prec"; }
        echo "$o" | grep -E "forward|peak" | sed 's/^/  ours:  /'
        r=$(echo "$o" | value step_samples_per_s)
        t=$(theirs $seq $prec $steps 2>&1) || { echo "$t" | tail -n 5; failed "PyTorch step $seq $prec"; }
        tr=$(echo "$t" | value samples_per_s)
        echo "  seq $seq $prec rep $rep: modalbench $r ($(mfu "$r" $prec)), PyTorch $tr ($(mfu "$tr" $prec)), PyTorch peak $(echo "$t" | value gpu_peak_mib) MiB"
        echo "  RESULT step seq=$seq prec=$prec ours=$r torch=$tr flops=$flops peak=${peak[$prec]}"
      done
    done
    if [ "$seq" = 512 ]; then
      o=$(ours 512 bf16 10 --gradient-checkpointing 2>&1) || failed "modalbench step 512 bf16 checkpointing"
      echo "$o" | grep -E "forward|peak" | sed 's/^/  ours, gradient checkpointing:  /'
    fi
  done
fi

if [[ " $parts " == *" eval "* ]]; then
  part "evaluation, batch 32 (examples/s; probabilities copied to the host at the end)"
  for seq in 128 512; do
    for prec in $precisions; do
      r=$(ours $seq $prec 30 --eval 2>&1 | value eval_samples_per_s)
      tr=$(theirs $seq $prec 30 --eval 2>&1 | value samples_per_s)
      echo "  RESULT eval seq=$seq prec=$prec ours=$r torch=$tr"
    done
  done
fi

[[ " $parts " == *" service "* ]] || { echo; echo "gpu-check: $failures failure(s), $(( $(date +%s) - t0 )) s"; exit $failures; }
part "the service on this machine: slots, a run with gpus 1 at fp16 on demo-news, its checkpoints"
"$bin/modalbench" data demo --out "$work/data/datasets" >/dev/null || failed "modalbench data demo"
port=18391
"$bin/modalbench" serve --addr 127.0.0.1:$port --data-dir "$work/data" --models-dir "$work/models" \
  >"$work/serve.log" 2>&1 &
server=$!
"$py" - "http://127.0.0.1:$port" "$device" "$work/data" <<'PY' || { failed "the served run"; tail -n 30 "$work/serve.log"; }
import json, os, sys, time, urllib.request
api, device, data = sys.argv[1], sys.argv[2], sys.argv[3]
def call(method, path, body=None):
    req = urllib.request.Request(api + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")
for _ in range(120):
    try:
        ready = call("GET", "/readyz"); break
    except Exception:
        time.sleep(0.5)
print("readyz:", ready)
with urllib.request.urlopen(api + "/metrics", timeout=30) as r:
    print("\n".join(l for l in r.read().decode().splitlines() if l.startswith("modalbench_slots")))
precision = "fp16" if device.startswith("cuda") else "no"
run = call("POST", "/api/v1/runs", {"model": "bert-base", "dataset": "demo-news", "epochs": 2, "batch_size": 32,
                                    "learning_rate": 5e-5, "mixed_precision": precision, "gpus": 1})
t = time.time()
while run["status"] not in ("succeeded", "failed", "cancelled") and time.time() - t < 180:
    time.sleep(1)
    run = call("GET", f"/api/v1/runs/{run['id']}")
keep = {k: run.get(k) for k in ("id", "status", "device", "error", "summary", "timings", "started_at", "finished_at")}
print(json.dumps({k: v for k, v in keep.items() if v is not None}, indent=1))
if run["status"] != "succeeded" or not str(run.get("device", "")).startswith(device.split(":")[0]):
    sys.exit(1)
# the checkpoints written from the device's tensors load in transformers
import torch, transformers
folder = os.path.join(data, "runs", str(run["id"]), "checkpoint")
models = {w: transformers.AutoModelForSequenceClassification.from_pretrained(os.path.join(folder, w)) for w in ("best", "last")}
state = json.load(open(os.path.join(folder, "last", "trainer_state.json")))["progress"]
same = os.path.samefile(*(os.path.join(folder, w, "model.safetensors") for w in ("best", "last")))
apart = max((a - b).abs().max().item() for a, b in zip(models["best"].state_dict().values(), models["last"].state_dict().values()))
print(f"checkpoints: best (step {state['best_step']}) and last (step {state['step']}) load in transformers; "
      f"best links last's weights: {same}; largest weight difference {apart:.3g}")
sys.exit(0 if same == (state["best_step"] == state["step"]) and same == (apart == 0) else 1)
PY
kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; server=

echo
echo "gpu-check: $failures failure(s), $(( $(date +%s) - t0 )) s"
exit $failures
