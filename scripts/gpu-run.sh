#!/usr/bin/env bash
# The one prepared GPU run (issue 14): full-size FLUX.1-dev-shaped random weights in bf16 and as
# Q8_0 and Q4_0, transformer steps at 1024x1024 against candle-transformers' Flux, attention
# alone, a CharaConsist storyboard (identity + 4 panels, 28 steps, one locked scene) and peak GPU
# memory, written as one JSON file.
#
#   scripts/gpu-run.sh BINARY[.gz] OUT.json [--size full|tiny] [--device cuda|cpu] [bench flags]
#
# BINARY is a stripped `--features cuda` release build (the GPU machine has no Rust toolchain),
# gzipped to travel: stripped it is about 92 MB (candle-kernels' PTX and sm_90a code), gzipped
# 23 MB, under the 64 MiB carried. tests/gpu_script.rs runs this with `--size tiny --device cpu`.
set -euo pipefail
bin=$1 out=$2
shift 2
if [[ $bin == *.gz ]]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    unpacked=$tmp/charaboard
    gzip -dc "$bin" >"$unpacked"
    chmod +x "$unpacked"
    bin=$unpacked
fi

# candle 0.11 links the driver's libcuda and cudart, cublas, cublasLt and curand (CUDA 13): where
# the loader does not find one, take it from the driver's folder, the CUDA toolkit or the Python
# wheels installed on the machine.
missing() { ldd "$bin" | grep -q 'not found'; }
if missing; then
    dirs=$(find /usr/local/nvidia /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib /opt /usr/lib \
        /usr/local/lib -maxdepth 8 \( -name 'libcuda.so.1' -o -name 'libcublasLt.so.13' \
        -o -name 'libcudart.so.13' -o -name 'libcurand.so.10' \) -printf '%h\n' 2>/dev/null |
        sort -u | paste -sd: || true)
    export LD_LIBRARY_PATH=${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
if missing; then
    echo "error: libraries $bin needs are not on this machine:" >&2
    ldd "$bin" | grep 'not found' >&2
    exit 1
fi

# 6.5 minutes in all, so that with the machine's start a rerun still fits in 15 minutes of device
# time: the binary begins no phase after 270 s and writes the JSON after every phase, so a run cut
# short still reports what it measured.
start=$(date +%s)
timeout --signal=KILL 390 "$bin" bench gpu-run --out "$out" --budget-s 270 "$@"
echo "gpu-run.sh: $(($(date +%s) - start)) s, figures in $out"
cat "$out"
