#!/usr/bin/env bash
# Prove the CUDA kernels on this machine's GPU, in one run of at most 8 minutes on an H100/H200, build included:
#   1. build in place with FORCE_CUDA=1, for this GPU's architecture only, MAX_JOBS = the cores;
#   2. the CUDA tests (pytest -k cuda, the kernels forced on);
#   3. the selftest on cuda (the kernels, then the torch path the gate falls back to), and the gate's first use;
#   4. mixed_sum against a plain device copy measured in the same run (goal >= 75 %);
#   5. the search step, soft and hard, against the reference (agreement, then time).
# Everything goes into one results file. It installs nothing: it uses the python/torch/nvcc found here.
#
#   bash bench/gpu_check.sh [RESULTS]            RESULTS defaults to $OUT/gpu_check.txt, else ./gpu_check.txt
#   bash bench/gpu_check.sh --dry-run [RESULTS]  check the environment and print the commands, run nothing
#
# Environment: PYTHON (default python3, else python); TORCH_CUDA_ARCH_LIST to build for other archs than the
# GPU's; GPU_CHECK_BUDGET_S (default 470) caps the whole run: each step's time limit is cut to what is left.
# Exit status: 0 all passed, 1 a step failed, 2 bad arguments, 3 the environment cannot run it (says why).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY=0
RESULTS=""
for arg in "$@"; do
  case "$arg" in
    --dry-run|--check-only) DRY=1 ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_check.sh: unknown option $arg (expected --dry-run or a results path)" >&2; exit 2 ;;
    *) [ -z "$RESULTS" ] || { echo "gpu_check.sh: one results path, got $RESULTS and $arg" >&2; exit 2; }
       RESULTS="$arg" ;;
  esac
done
if [ -z "$RESULTS" ]; then
  RESULTS="${OUT:-.}/gpu_check.txt"
fi
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
START=$SECONDS
DEADLINE=$((START + BUDGET))

# ------------------------------------------------------------------------------------ environment
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  PY="$(command -v python3 || command -v python || true)"
fi
MISSING=()
note() { ENV_REPORT+="$*"$'\n'; }
ENV_REPORT=""

declare -A P=()
if [ -z "$PY" ] || ! command -v "$PY" >/dev/null 2>&1; then
  MISSING+=("python: none found (set PYTHON)")
else
  PROBE_ERR="$(mktemp)"
  PROBE="$("$PY" "$REPO/bench/gpu_check.py" probe 2>"$PROBE_ERR")"
  if [ $? -ne 0 ]; then
    MISSING+=("torch: $PY cannot import it: $(tail -n 1 "$PROBE_ERR")")
  else
    while IFS='=' read -r k v; do [ -n "$k" ] && P[$k]="$v"; done <<<"$PROBE"
  fi
  rm -f "$PROBE_ERR"
fi
note "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
REV="$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git')"
git -C "$REPO" diff --quiet 2>/dev/null || REV+=", with uncommitted changes"
note "repo: $REPO ($REV)"
note "python: ${P[python]:-$PY} ${P[python_version]:-}"
note "torch: ${P[torch]:-?}, its CUDA: ${P[torch_cuda]:-none}"
if [ -n "${P[torch]:-}" ] && [ -z "${P[torch_cuda]:-}" ]; then
  MISSING+=("a CUDA build of torch: ${P[torch]} has no CUDA (nothing is installed from the network; bring one)")
fi
if [ -n "${P[torch_cuda]:-}" ] && [ "${P[cuda_available]:-0}" != 1 ]; then
  MISSING+=("a GPU that torch can see (torch.cuda.is_available() is False)")
fi

SMI="$(command -v nvidia-smi || true)"
ARCH_SMI=""
if [ -n "$SMI" ]; then
  note "nvidia-smi: $("$SMI" --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
    | head -n 4 | paste -sd ';' -)"
  # one line per GPU: the distinct capabilities, so two H200s build for 9.0 once
  ARCH_SMI="$("$SMI" --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d ' ' \
    | grep -E '^[0-9]+\.[0-9]+$' | sort -u | paste -sd ';' -)"
else
  note "nvidia-smi: not found"
fi
if [ -n "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  ARCH="$TORCH_CUDA_ARCH_LIST"; ARCH_FROM="TORCH_CUDA_ARCH_LIST, as set"
elif [ -n "$ARCH_SMI" ]; then
  ARCH="$ARCH_SMI"; ARCH_FROM="nvidia-smi compute_cap"
elif [ -n "${P[arch]:-}" ]; then
  ARCH="${P[arch]}"; ARCH_FROM="torch.cuda.get_device_capability"
else
  ARCH=""; ARCH_FROM=""
  MISSING+=("the GPU's architecture (no nvidia-smi, and torch sees no GPU; or set TORCH_CUDA_ARCH_LIST)")
fi
note "GPU: ${P[device]:-none visible to torch} (${P[gpus]:-0} visible);" \
  "build arch: ${ARCH:-?}${ARCH_FROM:+ (from $ARCH_FROM)}"

# the CUDA toolkit the build uses: CUDA_HOME, else torch's guess, else /usr/local/cuda; else nvcc on PATH alone
CUDA_DIR=""
for d in "${CUDA_HOME:-}" "${P[torch_cuda_home]:-}" /usr/local/cuda; do
  if [ -n "$d" ] && [ -x "$d/bin/nvcc" ]; then CUDA_DIR="$d"; break; fi
done
if [ -n "$CUDA_DIR" ]; then NVCC="$CUDA_DIR/bin/nvcc"; else NVCC="$(command -v nvcc || true)"; fi
if [ -n "$NVCC" ]; then
  NVCC_VERSION="$("$NVCC" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -n 1)"
  note "nvcc: $NVCC (${NVCC_VERSION:-version unknown})"
  if [ -n "${P[torch_cuda]:-}" ] && [ -n "$NVCC_VERSION" ] && [ "${NVCC_VERSION%%.*}" != "${P[torch_cuda]%%.*}" ]; then
    MISSING+=("an nvcc of torch's CUDA major version: nvcc $NVCC_VERSION, torch CUDA ${P[torch_cuda]}")
  fi
else
  note "nvcc: not found"
  MISSING+=("nvcc (set CUDA_HOME, or put nvcc on PATH)")
fi
# nproc obeys OMP_NUM_THREADS: the cores, not a thread setting
JOBS="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc 2>/dev/null || getconf _NPROCESSORS_ONLN || echo 2)"
note "cores: $JOBS (MAX_JOBS=$JOBS); time budget: ${BUDGET} s"

# ------------------------------------------------------------------------------------ the steps
BUILD_CMD="FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST='$ARCH' MAX_JOBS=$JOBS${CUDA_DIR:+ CUDA_HOME='$CUDA_DIR'}"
BUILD_CMD+=" $PY setup.py build_ext --inplace"
CUDA_TESTS="tests/ops/test_mixed_sum.py tests/ops/test_gumbel_softmax.py tests/ops/test_hard_mixed_sum.py"
CUDA_TESTS+=" tests/ops/test_mixed_op_free.py tests/ops/test_latency_reg.py tests/ops/test_selftest.py"
CUDA_TESTS+=" tests/ops/test_cuda_gate.py::test_cuda_first_use_runs_the_selftest_in_a_child_and_uses_the_kernels"
STEPS=(
  "build|300|$BUILD_CMD"
  "extension|30|$PY -c 'import dartscc_fast as d; print(d.BUILD_INFO); assert d.BUILD_INFO[\"cuda\"], \"no CUDA\"'"
  "cuda tests|150|DARTSCC_CUDA_KERNELS=1 $PY -m pytest -q -p no:cacheprovider -k cuda -rfEs $CUDA_TESTS"
  "selftest cuda|90|$PY -m dartscc_fast.cli selftest --device cuda"
  "selftest cuda torch path|60|$PY -m dartscc_fast.cli selftest --device cuda --torch-path"
  "gate|60|$PY bench/gpu_check.py gate --device cuda"
  "mixed_sum bandwidth|60|$PY bench/gpu_check.py bandwidth --device cuda"
  "search step|120|DARTSCC_CUDA_KERNELS=1 $PY bench/gpu_check.py search --device cuda"
)

plan() {
  echo "== the commands it runs (in $REPO, PYTHONPATH=$REPO, XDG_CACHE_HOME a fresh temporary folder)"
  local i=1
  for s in "${STEPS[@]}"; do
    IFS='|' read -r name cap cmd <<<"$s"
    printf '%d. %s (at most %s s): %s\n' "$i" "$name" "$cap" "$cmd"
    i=$((i + 1))
  done
}

{
  echo "== gpu_check environment"
  printf '%s' "$ENV_REPORT"
  for m in "${MISSING[@]}"; do echo "MISSING: $m"; done
} >&2

if [ "$DRY" = 1 ]; then
  plan
  if [ ${#MISSING[@]} -gt 0 ]; then
    echo "gpu_check.sh --dry-run: this machine cannot run it: ${#MISSING[@]} thing(s) missing (above)" >&2
    exit 3
  fi
  echo "gpu_check.sh --dry-run: the environment is ready" >&2
  exit 0
fi

mkdir -p "$(dirname "$RESULTS")"
{
  echo "# dartscc_fast gpu_check"
  printf '%s' "$ENV_REPORT"
  for m in "${MISSING[@]}"; do echo "MISSING: $m"; done
  echo
} >"$RESULTS"
if [ ${#MISSING[@]} -gt 0 ]; then
  echo "gpu_check.sh: this machine cannot run it (see $RESULTS):" >&2
  printf '  %s\n' "${MISSING[@]}" >&2
  echo "RESULT: not run (environment)" >>"$RESULTS"
  exit 3
fi

cd "$REPO" || exit 3
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
CACHE="$(mktemp -d)"
export XDG_CACHE_HOME="$CACHE"  # the gate decides afresh, and leaves nothing in the user's cache
trap 'rm -rf "$CACHE"' EXIT
SUMMARY=()
FAILED=0
BUILT=1
for s in "${STEPS[@]}"; do
  IFS='|' read -r name cap cmd <<<"$s"
  left=$((DEADLINE - SECONDS))
  limit=$((cap < left ? cap : left))
  if [ "$BUILT" = 0 ] && [ "$name" != build ]; then
    SUMMARY+=("$(printf '%-26s %-12s %5s' "$name" "skipped" "-") (no CUDA build)")
    continue
  fi
  if [ "$limit" -lt 10 ]; then
    SUMMARY+=("$(printf '%-26s %-12s %5s' "$name" "skipped" "-") (the ${BUDGET} s budget is spent)")
    FAILED=1
    continue
  fi
  echo "== [$((SECONDS - START)) s] $name: $cmd (limit ${limit} s)" | tee -a "$RESULTS" >&2
  t0=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$cmd" >>"$RESULTS" 2>&1
  rc=$?
  took=$((SECONDS - t0))
  case $rc in
    0) status=pass ;;
    124|137) status="TIMEOUT" ;;
    *) status="FAIL (rc $rc)" ;;
  esac
  if [ "$name" = "mixed_sum bandwidth" ] && [ "$rc" = 1 ]; then status="below goal"; fi
  [ "$rc" = 0 ] || FAILED=1
  if [ "$rc" != 0 ] && { [ "$name" = build ] || [ "$name" = extension ]; }; then BUILT=0; fi
  SUMMARY+=("$(printf '%-26s %-12s %4ss' "$name" "$status" "$took")")
  echo "-- $name: $status in ${took} s" | tee -a "$RESULTS" >&2
  echo >>"$RESULTS"
done

{
  echo "== summary (${BUDGET} s budget, $((SECONDS - START)) s used)"
  printf '%s\n' "${SUMMARY[@]}"
  if [ "$FAILED" = 0 ]; then echo "RESULT: all passed"; else echo "RESULT: FAILED"; fi
} | tee -a "$RESULTS" >&2
echo "results: $RESULTS" >&2
exit "$FAILED"
