#!/usr/bin/env bash
# The GPU checks of saerl's device path, in two halves.
#
#   bash scripts/gpu-check.sh build   # here (no GPU): builds the CUDA binary and the sae test
#                                     # binary, strips and compresses them into .gpu/ with the
#                                     # fixture and reference scripts they need
#   bash scripts/gpu-check.sh run [STEP...]
#                                     # on the GPU machine (H100/H200, driver 580, CUDA 13, PyTorch
#                                     # and transformers installed, no Rust), from the repo root
#                                     # with .gpu/ beside it: the kernel checks, the device-path
#                                     # trajectory, the demo with --device cuda, and the benchmarks
#                                     # beside PyTorch/transformers on the same GPU; logs in $OUT.
#                                     # STEPs (default: all) pick some of: kernels trajectory
#                                     # demo train train-profile whole-sae stats ingest study
#                                     # (study: `bench study --scale 0.1` through `saerl run`,
#                                     # with the GPU's utilisation sampled by nvidia-smi)
set -uo pipefail
cd "$(dirname "$0")/.."
G=.gpu

build() {
    set -e
    local shared="${SHARED:-../shared}"
    # shellcheck disable=SC1090
    source <(bash "$shared/cuda/setup.sh")
    cargo build --features cuda --bin saerl
    local test_bin
    test_bin=$(cargo test --features cuda --test sae --no-run 2>&1 | sed -n 's/.*Executable.*(\(.*\)).*/\1/p' | tail -1)
    local target="${CARGO_TARGET_DIR:-target}"
    rm -rf "$G" && mkdir -p "$G/fixtures" "$G/bench"
    cp "$target/debug/saerl" "$G/saerl"
    cp "$test_bin" "$G/sae-tests"
    strip "$G/saerl" "$G/sae-tests"
    xz -6 -T2 "$G/saerl" "$G/sae-tests"
    cp -r "$shared/fixtures/sae-train" "$G/fixtures/"
    cp "$shared"/bench/*.py "$G/bench/"
    du -sh "$G"
}

run() {
    local out="${OUT:-/tmp/gpu-out}"
    mkdir -p "$out" /tmp/gpu
    xz -dc "$G/saerl.xz" >/tmp/gpu/saerl && xz -dc "$G/sae-tests.xz" >/tmp/gpu/sae-tests
    chmod +x /tmp/gpu/saerl /tmp/gpu/sae-tests
    # The CUDA libraries of the Python that holds PyTorch (cuBLAS, cuRAND, the runtime, NVRTC).
    local nv
    nv=$(python3 -c "import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))")
    export LD_LIBRARY_PATH="$(find "$nv/nvidia" -name 'lib' -type d | tr '\n' ':')${LD_LIBRARY_PATH:-}"
    export SAERL_BENCH_REFS="$PWD/$G/bench" SAERL_PYTHON=python3 PYTHONUNBUFFERED=1
    local S=/tmp/gpu/saerl status=0
    step() {
        local name=$1
        shift
        echo "=== $name: $*"
        local t0=$SECONDS
        if timeout "${LIMIT:-240}" "$@" >"$out/$name.log" 2>&1; then
            echo "--- $name ok ($((SECONDS - t0)) s)"
        else
            echo "--- $name FAILED ($((SECONDS - t0)) s)"
            status=1
        fi
        tail -n "${TAIL:-12}" "$out/$name.log"
    }
    local steps=("$@")
    [ ${#steps[@]} -gt 0 ] || steps=(kernels trajectory demo train train-profile whole-sae stats ingest study)
    nvidia-smi -L
    for s in "${steps[@]}"; do
        case $s in
            kernels) step kernels "$S" bench kernels --device cuda ;;
            trajectory)
                SAERL_FIXTURES="$PWD/$G/fixtures" SAERL_TEST_DEVICE=cuda \
                    step trajectory /tmp/gpu/sae-tests the_device_path_follows --nocapture
                ;;
            demo) TAIL=20 step demo "$S" demo --device cuda --out /tmp/gpu/demo ;;
            train) step train "$S" bench train --device cuda --steps 200 ;;
            # Phase times (the device is synchronised between phases, so the total is slower).
            train-profile) SAERL_PROFILE=1 step train-profile "$S" bench train --device cuda --steps 100 --refs none ;;
            whole-sae) step whole-sae "$S" bench train --device cuda --rows 445744 --epochs 20 ;;
            stats) step stats "$S" bench stats --device cuda ;;
            ingest) step ingest "$S" bench ingest --device cuda --n 256 ;;
            study)
                # The whole study at S = 0.1 (S = 1's 109 GB of activations do not fit this
                # machine's disk), the GPU's utilisation sampled once a second meanwhile.
                nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 >"$out/gpu-util.csv" &
                local smi=$!
                LIMIT=${STUDY_LIMIT:-470} TAIL=30 step study "$S" bench study --device cuda --scale "${SCALE:-0.1}" --dtype "${DTYPE:-bf16}" --keep /tmp/gpu/study
                kill "$smi" 2>/dev/null
                awk -F', ' '{u+=$1; m=($2>m?$2:m); n++} END {if (n) printf "GPU utilisation: mean %.0f %% over %d s, peak memory %d MiB\n", u/n, n, m}' "$out/gpu-util.csv"
                ;;
            *) echo "unknown step $s" && status=1 ;;
        esac
    done
    cp /tmp/gpu/demo/quality.csv "$out/" 2>/dev/null
    return $status
}

case "${1:-}" in
    build) build ;;
    run) shift && run "$@" ;;
    *)
        echo "usage: $0 build|run" >&2
        exit 2
        ;;
esac
