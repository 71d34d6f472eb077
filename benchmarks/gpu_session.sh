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
# candidates.md (forward-only candidate evaluation), predict.md (`seaflow predict` end to end on
# the GPU: a tiny random model in bfloat16, SEA and the demo's method, 1 device and, where the
# machine has two, 2 devices with DDP) and session.log (environment first) under $OUT: eight
# files, the most a device run brings back.
# `seaflow predict` needs jsonargparse and vaderSentiment, which the device image lacks: run
# benchmarks/gpu_wheels.sh here first and carry .whl; they are installed from there.
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
} > "$OUT/session.log" 2>&1
log "environment: $(tail -n 2 "$OUT/session.log" | tr '\n' ' ')"

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then  # benchmarks/gpu_wheels.sh, carried
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/seaflow-site .whl/*.whl >> "$OUT/session.log" 2>&1; then
    export PYTHONPATH="/tmp/seaflow-site${PYTHONPATH:+:$PYTHONPATH}"
    log "installed the carried wheels: $(ls .whl | tr '\n' ' ')"
  else
    log "the carried wheels did not install (see above); seaflow predict may not run"
  fi
fi

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

predict_e2e() {  # seaflow predict on the GPU, bf16, tiny random model: SEA and the demo's method
  local dir=/tmp/seaflow-e2e gpus
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  rm -rf "$dir" && mkdir -p "$dir"
  "$PY" -c "from pathlib import Path; from seaflow.testing.tiny import build_models; build_models(Path('$dir/models'))" || return 1
  printf '%s\n' '{"id": "p0", "prompt": "describe the city"}' '{"id": "p1", "prompt": "how was the train"}' \
    '{"id": "p2", "prompt": "tell me about the weather"}' '{"id": "p3", "prompt": "write about my dog"}' > "$dir/prompts.jsonl"
  local runs=("sea 1 configs/sea.yaml --model.init_args.steps 3" "demo 1 configs/demo.yaml --model.init_args.steps 4")
  [ "$gpus" -ge 2 ] && runs+=("sea 2 configs/sea.yaml --model.init_args.steps 3 --trainer.strategy ddp")
  for spec in "${runs[@]}"; do
    set -- $spec
    local name=$1 devices=$2 config=$3; shift 3
    echo "## $name on $devices device(s): $config $*"
    timeout 120 "$PY" -m seaflow.cli predict --config "$config" "$@" \
      --model.init_args.policy "$dir/models/policy" --model.init_args.dtype bfloat16 --model.init_args.max_new_tokens 8 \
      --data.path "$dir/prompts.jsonl" --data.limit null --data.batch_size 2 \
      --trainer.accelerator "${E2E_ACCELERATOR:-gpu}" --trainer.devices "$devices" --trainer.enable_progress_bar false \
      --output.output_dir "$dir/$name-$devices" --output.overwrite true 2>&1 | tail -n 25
    echo "exit ${PIPESTATUS[0]}; records: $(wc -l < "$dir/$name-$devices/predictions.jsonl" 2>/dev/null || echo 0)"
    "$PY" -c "import json, sys; r = [json.loads(l) for l in open(sys.argv[1])]; print('first record:', {k: r[0][k] for k in ('id', 'method', 'response', 'reward', 'wall_time_s')})" \
      "$dir/$name-$devices/predictions.jsonl" 2>&1
  done
}
log "start predict (seaflow predict end to end, bf16 tiny model)"
predict_e2e > "$OUT/predict.md" 2>&1
log "end predict (exit $?)"
log "done in $(( $(date +%s) - started ))s"
