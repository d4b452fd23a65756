#!/usr/bin/env bash
# Installs a CUDA 13.0 toolchain from PyPI's NVIDIA wheels into one folder, so that
# `cargo build --release --features cuda` works on a machine without CUDA (and without a GPU).
#
#   scripts/cuda-toolchain.sh [DIR]        (default: target/cuda-13.0)
#   source DIR/env
#   cargo build --release --features cuda --target-dir target/cuda
#
# The 13.0 line is pinned: PTX from a newer toolkit than the GPU machine's driver is refused
# at load. Running it again with DIR in place only rewrites DIR/env.
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${1:-target/cuda-13.0}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
root=$dir/site/nvidia/cu13

wheels=(
    nvidia-cuda-nvcc==13.0.88    # nvcc, ptxas, fatbinary, nvlink
    nvidia-nvvm==13.0.88         # cicc and libdevice
    nvidia-cuda-crt==13.0.88     # crt/ headers nvcc includes
    nvidia-cuda-runtime==13.0.96 # cuda_runtime.h, cuda.h, libcudart
    nvidia-cuda-cccl==13.0.85    # cub, thrust, libcu++ (candle-kernels' reduce.cu, moe)
    nvidia-cuda-nvrtc==13.0.88   # libnvrtc, linked by cudarc
    nvidia-curand==10.4.0.35     # libcurand (CUDA 13.0)
    nvidia-cublas==13.0.2.14     # libcublas, libcublasLt (CUDA 13.0)
)

if [[ ! -x $root/bin/nvcc ]]; then
    # One pip call: --target does not merge into a folder an earlier call made.
    rm -rf "$dir/site"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps --only-binary=:all: \
        --target "$dir/site" "${wheels[@]}"
fi
"$root/bin/nvcc" --version | grep -q 'release 13.0,' ||
    { echo "error: $root/bin/nvcc is not CUDA 13.0" >&2; exit 1; }

# The wheels ship only versioned libraries; the linker (-lcublas) needs the plain names.
for lib in "$root"/lib/lib*.so.*; do
    base=${lib##*/}
    ln -sf "$base" "$root/lib/${base%%.so.*}.so"
done

# cudarc links libcuda, which only the driver provides. As the toolkit does, link against a stub
# that defines every driver entry point of cuda.h (the _v2 names included, through the
# preprocessor); at run time the driver's libcuda.so.1 is the one loaded.
mkdir -p "$root/lib/stubs"
if [[ ! -f $root/lib/stubs/libcuda.so ]]; then
    gcc -E -P -I"$root/include" "$root/include/cuda.h" |
        grep -oE '\bcu[A-Z][A-Za-z0-9_]* *\(' | tr -d ' (' | sort -u |
        sed 's/.*/void &(void) {}/' >"$dir/libcuda-stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$root/lib/stubs/libcuda.so" "$dir/libcuda-stub.c"
fi

# candle-kernels finds nvcc on PATH and takes the target from CUDA_COMPUTE_CAP (there is no
# nvidia-smi here): 90 builds its PTX and its quantized-matmul library for Hopper (sm_90a).
# cudarc finds the libraries under CUDA_ROOT and the CUDA version from `nvcc --version`.
cat >"$dir/env" <<EOF
export CUDA_ROOT=$root
export CUDA_HOME=$root
export PATH=$root/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
EOF
echo "CUDA 13.0 toolchain in $root"
echo "to build:  source $dir/env && cargo build --release --features cuda --target-dir target/cuda"
