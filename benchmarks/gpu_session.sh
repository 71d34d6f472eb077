#!/usr/bin/env bash
# The GPU benchmarks of docs/performance.md in one run, for a session with a lent H100/H200.
#
#   bash benchmarks/gpu_session.sh            # writes to $OUT (the device tool's folder), else ./gpu-results
#
# Needs a python3 with torch, transformers, lightning and tokenizers (the device image has
# them; jsonargparse, wandb and gguf are not imported by the benchmarks). Each benchmark
# runs under its own time limit so that the whole script ends within about 9 minutes;
# a benchmark cut off by its limit keeps the rows it printed. Results: step_overhead.md,
# prefix_cache.md, throughput.md, memory.md (peak per chain, Llama-3.2-1B shape, bf16 and fp32),
# compile.md (torch.compile against eager: compile time, step time, break-even steps),
# candidates.md (forward-only candidate evaluation), environment.txt and session.log under $OUT.
# SKIP_INSTALL=1 leaves pip alone (the checkout is used through PYTHONPATH either way).
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python3}"
started=$(date +%s)
log() { echo "[$(( $(date +%s) - started ))s] $*" | tee -a "$OUT/session.log"; }

{
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  "$PY" -c "import torch, transformers, lightning; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); print('transformers', transformers.__version__, 'lightning', lightning.__version__)"
} > "$OUT/environment.txt" 2>&1
log "environment: $(tail -n 2 "$OUT/environment.txt" | tr '\n' ' ')"

# the repository itself, without dependencies (nothing can be downloaded there); the benchmarks
# also find it on their own path if the install is refused
if [ -n "${SKIP_INSTALL:-}" ]; then
  log "SKIP_INSTALL set: using the checkout through PYTHONPATH"
elif "$PY" -m pip install -q -e . --no-deps --no-build-isolation >> "$OUT/session.log" 2>&1; then
  log "installed seaflow (editable, no dependencies)"
else
  log "pip install refused; using the checkout through PYTHONPATH"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device: nothing to measure (the GPU presets need one)"
  exit 0
fi

run() {  # run NAME LIMIT_SECONDS ARGS...: one benchmark, its table to $OUT/NAME.md
  local name=$1 limit=$2; shift 2
  log "start $name (limit ${limit}s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$PY" "$@" > "$OUT/$name.md" 2>> "$OUT/session.log"
  log "end $name (exit $?)"
}

run step_overhead 100 benchmarks/step_overhead.py --preset gpu --repeats 5
run prefix_cache 60 benchmarks/prefix_cache.py --preset gpu --repeats 5
run throughput 120 benchmarks/throughput.py --preset gpu --repeats 2
run memory 80 benchmarks/memory.py --device cuda --dtypes bfloat16 float32 --chains 1 2 4
run compile 120 benchmarks/compile.py --preset gpu
run candidates 60 benchmarks/candidates.py --preset gpu
log "done in $(( $(date +%s) - started ))s"
