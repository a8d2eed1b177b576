#!/usr/bin/env bash
# The GPU path, checked and measured in one go (issue 14): the `gpu` tests, then the
# inner-loop benchmark on random-weight Qwen2.5 architectures (no download), then
# self-edit sampling HF vs vLLM (benchmarks/self_edit_backends.py, issue 22), writing
# everything to one folder.
#
#   bash benchmarks/gpu_check.sh [OUT]          # OUT default: benchmarks/results/gpu-<UTC time>
#
# Needs: a CUDA device; torch, transformers, peft, accelerate and seal's light dependencies
# (pydantic, pyyaml, typer, rich, tokenizers, datasets for the reference variant); pytest for
# the tests (skipped with a note when absent). TRL is optional: without it the `seal train`
# test skips. The data: SEAL_DATA_DIR, else ../shared/data beside the repository (it reads
# squad/train_100_selfedits_qwen2.5-7b_base.json, pool_767.json, val_200.json).
#
# Knobs (environment):
#   SIZES="0.5b 1.5b 7b"     which Qwen2.5 architectures to benchmark
#   N_SELF_EDITS=32          self-edit evaluations per variant
#   BATCH_SIZES="4 8 16 32"  N of the batched variants (the sequential variant is N=1)
#   REPEATS=1                runs per variant (medians reported)
#   N_REFERENCE=3            evaluations of the reference design (PEFT + HF Trainer) per run
#   REFERENCE_SIZES="0.5b 1.5b"  sizes that run the reference design (it is slow at 7B)
#   STEP_TIMEOUT=900         seconds per step (tests, each size) before it is stopped
#   PYTHON=python
#   SKIP_TESTS=1             benchmarks only
# Each step runs even if an earlier one failed; the exit status is 1 if any failed.
# On a device with a small time budget, run the sizes in separate calls, e.g.
#   SIZES=0.5b bash benchmarks/gpu_check.sh out/a; SKIP_TESTS=1 SIZES="1.5b 7b" bash benchmarks/gpu_check.sh out/b
# Estimated (not measured) on one H100/H200: tests < 1 min; 0.5B and 1.5B 1-3 min each; 7B 3-6 min.

set -u
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results/gpu-$(date -u +%Y%m%dT%H%M%SZ)}
PYTHON=${PYTHON:-python}
SIZES=${SIZES:-"0.5b 1.5b 7b"}
N_SELF_EDITS=${N_SELF_EDITS:-32}
BATCH_SIZES=${BATCH_SIZES:-"4 8 16 32"}
REPEATS=${REPEATS:-1}
N_REFERENCE=${N_REFERENCE:-3}
REFERENCE_SIZES=${REFERENCE_SIZES:-"0.5b 1.5b"}
STEP_TIMEOUT=${STEP_TIMEOUT:-900}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.md"
failed=0

log() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/gpu_check.log"; }

# ---------------------------------------------------------------- environment
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo
  echo '```'
  git rev-parse HEAD 2>/dev/null || echo "(not a git checkout)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | head -5
  "$PYTHON" - <<'EOF'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "peft", "accelerate", "trl", "flash_attn", "pytest", "pydantic", "datasets"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except ImportError:
        print(name, "MISSING")
EOF
  echo '```'
} > "$SUMMARY" 2>&1
cat "$SUMMARY"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "no CUDA device: nothing to check"; exit 1
fi
if ! "$PYTHON" -c "from seal.data import default_data_root, resolve_data_path; resolve_data_path('squad/train_100_selfedits_qwen2.5-7b_base.json')" 2>>"$OUT/gpu_check.log"; then
  log "data not found: set SEAL_DATA_DIR to the folder that holds squad/ (see $OUT/gpu_check.log)"; exit 1
fi

# ---------------------------------------------------------------- tests
if [ -z "${SKIP_TESTS:-}" ]; then
  if "$PYTHON" -c "import pytest" 2>/dev/null; then
    log "tests: python -m pytest -m gpu tests/test_gpu.py"
    timeout "$STEP_TIMEOUT" "$PYTHON" -m pytest -m gpu tests/test_gpu.py -v -rs -p no:cacheprovider \
      --junitxml="$OUT/tests.xml" > "$OUT/tests.log" 2>&1
    rc=$?
    tail -15 "$OUT/tests.log"
    { echo; echo "## gpu tests (exit $rc)"; echo; echo '```'; grep -E "PASSED|FAILED|SKIPPED|ERROR|passed|failed" "$OUT/tests.log" | tail -20; echo '```'; } >> "$SUMMARY"
    [ "$rc" -eq 0 ] || failed=1
  else
    log "pytest is not installed: gpu tests not run"
    { echo; echo "## gpu tests: not run (pytest missing)"; } >> "$SUMMARY"
  fi
fi

# ---------------------------------------------------------------- benchmarks
for size in $SIZES; do
  name="qwen2.5-$size"
  ref=(--n-reference 0)
  case " $REFERENCE_SIZES " in *" $size "*) ref=(--n-reference "$N_REFERENCE") ;; esac
  log "benchmark $name: evaluations/s, s/evaluation, peak memory, MFU (reference: ${ref[*]})"
  # shellcheck disable=SC2086
  timeout "$STEP_TIMEOUT" "$PYTHON" benchmarks/inner_loop.py --model-config "$name" --device cuda \
    --n-self-edits "$N_SELF_EDITS" --batch-sizes $BATCH_SIZES --repeats "$REPEATS" "${ref[@]}" \
    --threads 0 --output "$OUT/$name" > "$OUT/$name.log" 2>&1
  rc=$?
  tail -25 "$OUT/$name.log"
  if [ "$rc" -eq 0 ] && [ -f "$OUT/$name/inner_loop.md" ]; then
    { echo; echo "## $name"; echo; sed 1,2d "$OUT/$name/inner_loop.md"; } >> "$SUMMARY"
  else
    failed=1
    { echo; echo "## $name: FAILED (exit $rc; 124 = timed out after ${STEP_TIMEOUT}s), last lines:"; echo; echo '```'; tail -15 "$OUT/$name.log"; echo '```'; } >> "$SUMMARY"
  fi
done

# ---------------------------------------------------------------- self-edit sampling: HF vs vLLM
# Self-edits per second through seal's two backends (self_edit.backend hf | vllm) on the
# first of SIZES (random weights); vLLM skipped with a note when it is not installed.
# Knobs: SELF_EDIT_PASSAGES=64 SELF_EDIT_K=5 SELF_EDIT_TOKENS=256
size=${SIZES%% *}
vllm_flag=()
"$PYTHON" -c "import vllm" 2>/dev/null || { vllm_flag=(--skip-vllm); log "vLLM is not installed: HF self-edit sampling only (pip install 'seal[vllm]')"; }
log "benchmark self-edit sampling qwen2.5-$size: HF vs vLLM ${vllm_flag[*]:-}"
timeout "$STEP_TIMEOUT" "$PYTHON" benchmarks/self_edit_backends.py --model-config "qwen2.5-$size" \
  --n-passages "${SELF_EDIT_PASSAGES:-64}" --k "${SELF_EDIT_K:-5}" --max-new-tokens "${SELF_EDIT_TOKENS:-256}" \
  "${vllm_flag[@]}" --output "$OUT/self_edits" > "$OUT/self_edits.log" 2>&1
rc=$?
tail -8 "$OUT/self_edits.log"
if [ "$rc" -eq 0 ] && [ -f "$OUT/self_edits/self_edit_backends.md" ]; then
  { echo; echo "## self-edit sampling"; echo; sed 1,2d "$OUT/self_edits/self_edit_backends.md"; } >> "$SUMMARY"
else
  failed=1
  { echo; echo "## self-edit sampling: FAILED (exit $rc), last lines:"; echo; echo '```'; tail -15 "$OUT/self_edits.log"; echo '```'; } >> "$SUMMARY"
fi

log "done (failed=$failed); results in $OUT, summary in $SUMMARY"
exit "$failed"
