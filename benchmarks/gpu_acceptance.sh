#!/usr/bin/env bash
# One-shot GPU acceptance: `make gpu-check` (or this script) is the first command a session with a
# GPU runs. Steps in order of value, each under its own time limit, all within GPU_CHECK_BUDGET
# seconds (default 470: under 8 minutes with the machine's start); CSV rows and a log go to $OUT
# (default ./gpu-out), and a summary table is printed last. Runs from the source tree
# (PYTHONPATH=src) with the machine's own python3 (PYTHON= to choose another). liger-kernel comes
# from a wheel in .whl/ when one is there (pip install --no-index --target, a temporary folder);
# without it the Liger rows are skipped with a line that says so.
#   benchmarks/gpu_acceptance.sh             # on a CUDA machine
#   benchmarks/gpu_acceptance.sh --dry-run   # tiny sizes on CPU, Triton's interpreter (CI runs this)
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=""
[[ "${1:-}" == "--dry-run" ]] && DRY="--dry-run"
PY="${PYTHON:-python3}"
export OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
rm -f "$OUT/steps.tsv" "$OUT/gpu_acceptance.csv"
LOG="$OUT/gpu_acceptance.log"
: > "$LOG"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_DEFAULT_FP_FUSION=1
if [[ -n "$DRY" ]]; then
  export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""
fi
BUDGET="${GPU_CHECK_BUDGET:-470}"
SCALE=1
if [[ -n "$DRY" ]]; then  # the interpreter on a shared CPU: same steps, looser limits
  SCALE=4
  BUDGET=$((BUDGET * SCALE))
fi
START=$SECONDS

say() { echo "$@" | tee -a "$LOG"; }

wheel=$(ls .whl/liger_kernel-*.whl 2>/dev/null | head -n1)
if [[ -n "$wheel" && -z "$DRY" ]]; then
  SITE=$(mktemp -d)
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$wheel" >>"$LOG" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:$SITE"
    say "liger-kernel: installed from $wheel"
  else
    say "liger-kernel: could not install $wheel; Liger steps skipped"
  fi
elif [[ -z "$DRY" ]]; then
  say "liger-kernel: no wheel in .whl/ (pip download --no-deps liger-kernel -d .whl/); Liger steps skipped"
fi

# step NAME LIMIT COMMAND...: runs COMMAND under min(LIMIT, what is left of the budget).
step() {
  local name=$1 limit=$(($2 * SCALE))
  shift 2
  local left=$((BUDGET - (SECONDS - START)))
  if ((left < 15)); then
    say "=== $name: skipped, budget spent"
    printf '%s\tskipped (budget)\t0\n' "$name" >>"$OUT/steps.tsv"
    return
  fi
  ((limit > left)) && limit=$left
  say "=== $name (limit ${limit}s)"
  local begin=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]} status=ok
  ((rc == 124 || rc == 137)) && status="TIMEOUT"
  ((rc != 0 && rc != 124 && rc != 137)) && status="FAIL (exit $rc)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - begin))" >>"$OUT/steps.tsv"
}

A="benchmarks/gpu_acceptance.py"
TRITON_TESTS=(tests/test_triton_cross_entropy.py tests/test_triton_hazards.py tests/test_linear_cross_entropy_triton.py)
step versions 20 "$PY" $A versions $DRY
if [[ -n "$DRY" ]]; then
  step triton-tests 60 "$PY" -m pytest -q -p no:cacheprovider --collect-only "${TRITON_TESTS[@]}"
else
  step triton-tests 110 "$PY" -m pytest -q -p no:cacheprovider -x "${TRITON_TESTS[@]}"
fi
step exact 100 "$PY" $A exact $DRY
step big 45 "$PY" $A big $DRY
step linear 40 "$PY" $A linear $DRY
step vocab-parallel 30 "$PY" $A vocab_parallel $DRY
step timing 120 "$PY" $A timing $DRY
step linear-timing 60 "$PY" $A linear_timing $DRY
step lab 90 "$PY" $A lab $DRY
step sweep 40 "$PY" $A sweep $DRY
"$PY" $A summary $DRY 2>&1 | tee -a "$LOG"
! grep -qP '\t(FAIL|TIMEOUT)' "$OUT/steps.tsv"
