#!/usr/bin/env bash
# Issue 15's anchor: the same storyboard (identity + 3 panels of one scene, the courier of
# tests/render_cli.rs) rendered by charaboard and by the authors' PyTorch code on the same
# random pipeline, CPU, f32, alternated pair by pair, with the ratio of each pair.
#
#   scripts/pytorch-anchor.sh CHARABOARD AUTHORS_CHECKOUT [--transformer tiny|head128]
#       [--size 256] [--steps 50] [--pairs 2] [--threads 1] [--work DIR]
#
# AUTHORS_CHECKOUT: a clone of the authors' CharaConsist repository (scripts/pytorch_anchor.py
# patches its models/ at run time: cuda -> cpu, bf16 -> f32). Python: $PYENV (default
# target/pytorch-anchor-venv), made on first use with diffusers 0.32.2 and transformers 4.49.0
# pinned as the authors' requirements pin them, and today's torch from PyPI.
# --threads sets both sides' threads (RAYON_NUM_THREADS, torch.set_num_threads): on a machine
# others share, 1 thread a side keeps CPU seconds honest (OpenMP's spinning threads bill CPU
# time while they wait for a core).
# charaboard is timed as its whole process (load, encoders, decodes, PNGs, overlays); PyTorch's
# storyboard in process, its import and model loading left out (printed apart).
set -euo pipefail
bin=$(realpath "$1") authors=$(realpath "$2")
shift 2
transformer=tiny size=256 steps=50 pairs=2 threads=1 work=
while (($#)); do
    case $1 in
    --transformer) transformer=$2 ;;
    --size) size=$2 ;;
    --steps) steps=$2 ;;
    --pairs) pairs=$2 ;;
    --threads) threads=$2 ;;
    --work) work=$2 ;;
    *) echo "unknown flag $1" >&2 && exit 2 ;;
    esac
    shift 2
done
here=$(cd "$(dirname "$0")" && pwd)
pyenv=${PYENV:-$here/../target/pytorch-anchor-venv}
if [[ ! -x $pyenv/bin/python ]]; then
    python3 -m venv "$pyenv"
    "$pyenv/bin/pip" install -q torch diffusers==0.32.2 transformers==4.49.0 safetensors \
        sentencepiece protobuf accelerate opencv-python-headless einops
fi
if [[ -z $work ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
fi
cd "$work"
"$bin" tiny-model --out model --transformer "$transformer" >/dev/null 2>&1
env='in an empty background,'
character='a courier girl with short black hair and a green jacket,'
for action in 'standing, front view' waving 'running with a parcel' 'knocking on a door'; do
    echo "$env#$character#$action"
done >prompts.txt
"$bin" import prompts.txt --out project >/dev/null
sed -i "s/width: 1024/width: $size/; s/height: 1024/height: $size/; s/seed: 2025,/seed: 2025, steps: Some($steps),/" \
    project/prompts-01.ron

echo "storyboard: identity + 3 panels, ${size}x$size, $steps steps, f32, $transformer pipeline, $threads thread(s) a side"
for ((i = 1; i <= pairs; i++)); do
    rm -rf out
    RAYON_NUM_THREADS=$threads /usr/bin/time -o time.txt -f '%U %S %e' \
        "$bin" render project/prompts-01.ron --model model --out out >render.log 2>&1
    theirs=$("$pyenv/bin/python" "$here/pytorch_anchor.py" "$authors" model prompts.txt \
        --size "$size" --steps "$steps" --threads "$threads" 2>pytorch.log | grep '^anchor:')
    read -r user sys wall <time.txt
    cpu=$(echo "$user + $sys" | bc)
    py_cpu=$(sed 's/^anchor: cpu_s=\([0-9.]*\).*/\1/' <<<"$theirs")
    py_wall=$(sed 's/.* wall_s=\([0-9.]*\).*/\1/' <<<"$theirs")
    printf 'pair %d: charaboard %.2f s CPU (%.2f s wall), PyTorch %.2f s CPU (%.2f s wall): ratio %.3f CPU, %.3f wall\n' \
        "$i" "$cpu" "$wall" "$py_cpu" "$py_wall" "$(echo "$cpu / $py_cpu" | bc -l)" "$(echo "$wall / $py_wall" | bc -l)"
    echo "  PyTorch: ${theirs#anchor: }"
done
