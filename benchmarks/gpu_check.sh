#!/usr/bin/env bash
# One-command GPU verification (issue 6): on a machine with an NVIDIA GPU and
# torch+CUDA, Triton and nvcc, build the extension in place against that torch,
# run the GPU tests (triton and cuda backends vs the reference: values,
# gradients, samples from the same uniforms, fp32 and bf16/fp16), then the
# benchmark table; everything lands in one folder (logs, junit XML, JSON,
# markdown, PNG).
#
#   benchmarks/gpu_check.sh [--out DIR] [--python PY] [--skip-build] [--skip-tests]
#                           [--skip-bench] [--quick] [--dry-run]
#
# Exit codes: 0 all passed; 1 a step failed; 2 bad arguments; 3 no CUDA GPU here.
set -uo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

OUT="" PY="${PYTHON:-python3}" BUILD=1 TESTS=1 BENCH=1 QUICK=0 DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || { echo "gpu_check: --out needs a directory" >&2; exit 2; }; OUT=$2; shift 2 ;;
        --python) [ $# -ge 2 ] || { echo "gpu_check: --python needs an interpreter" >&2; exit 2; }; PY=$2; shift 2 ;;
        --skip-build) BUILD=0; shift ;;
        --skip-tests) TESTS=0; shift ;;
        --skip-bench) BENCH=0; shift ;;
        --quick) QUICK=1; shift ;;
        --dry-run) DRY=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT=${OUT:-gpu-check-$(date +%Y%m%d-%H%M%S)}
FAILED=()

run() {  # run NAME CMD... : log to $OUT/NAME.log, remember failures
    local name=$1; shift
    echo "==> [$name] $*"
    [ "$DRY" = 1 ] && return 0
    local t0=$SECONDS
    "$@" > >(tee "$OUT/$name.log") 2>&1
    local rc=$?
    echo "==> [$name] rc=$rc in $(( SECONDS - t0 ))s"
    [ "$rc" -eq 0 ] || FAILED+=("$name")
}

if [ "$DRY" = 0 ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        echo "gpu_check: no CUDA GPU is visible to torch ($PY); nothing to verify here." >&2
        echo "gpu_check: run it on a machine with an NVIDIA GPU, torch with CUDA, Triton and nvcc." >&2
        exit 3
    fi
    mkdir -p "$OUT"
    { nvidia-smi || true; "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'triton', triton.__version__, 'device', torch.cuda.get_device_name())"; } > "$OUT/device.txt" 2>&1
    cat "$OUT/device.txt"
fi

export TRITON_CACHE_DIR="$PWD/.cache/triton" TORCH_EXTENSIONS_DIR="$PWD/.cache/torch_extensions"
unset TRITON_INTERPRET  # real GPU kernels, not the interpreter

if [ "$BUILD" = 1 ]; then
    run build env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-8}" "$PY" -m pip install --no-build-isolation --no-deps -e .
fi
if [ "$TESTS" = 1 ]; then
    # GPU tests first (triton + cuda vs the reference), then the rest of the suite on this machine.
    run tests-gpu "$PY" -m pytest -q -m gpu --junitxml="$OUT/tests-gpu.xml" tests
    [ "$QUICK" = 1 ] || run tests-all "$PY" -m pytest -q -m "not slow" --junitxml="$OUT/tests-all.xml" tests
fi
if [ "$BENCH" = 1 ]; then
    sweep=(--sweep); [ "$QUICK" = 1 ] && sweep=()
    run bench "$PY" -m armodel_fast bench --device cuda "${sweep[@]}" --json "$OUT/bench.json" \
        --markdown "$OUT/bench.md" --plot "$OUT/bench.png"
fi

if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]} (logs in $OUT/)" >&2
    exit 1
fi
if [ "$DRY" = 1 ]; then echo "gpu_check: dry run, nothing executed"; else echo "gpu_check: all steps passed; results in $OUT/"; fi
