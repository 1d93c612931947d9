#!/usr/bin/env bash
# The GPU measurements of BENCHMARKS.md in one short script (about 8 minutes on one H100, most of it compiling), for the `device` tool.
#
# Prepare here once (the GPU machine has CUDA torch but not diffusers and cannot reach the internet):
#   echo /.whl/ >> .git/info/exclude
#   for p in diffusers==0.42.1 transformers==5.24.0 accelerate==1.15.0 peft==0.21.2 safetensors huggingface_hub \
#            tokenizers regex; do python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#            --platform manylinux2014_x86_64 -d .whl "$p"; done
# Then run it there with carry [".whl"]:  bash benchmarks/gpu_check.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 benchmarks/sampling.py --preset sd15 --dtype float16 --batch 1 8 --repeats 3 --check --json "$OUT/sampling_sd15.json" 2>&1 | tee "$OUT/sampling_sd15.txt"
python3 benchmarks/sampling.py --preset sdxl --dtype float16 --batch 1 8 --repeats 3 --json "$OUT/sampling_sdxl.json" 2>&1 | tee "$OUT/sampling_sdxl.txt"
# the levers at equal settings on both sides: channels_last and Inductor for diffusers' UNet and ours alike
python3 benchmarks/sampling.py --preset sd15 --dtype float16 --batch 1 8 --repeats 3 --only ours "ours, concurrent streams" \
    --channels-last --compile inductor --json "$OUT/sampling_sd15_compiled.json" 2>&1 | tee "$OUT/sampling_sd15_compiled.txt"
python3 benchmarks/train_throughput.py --preset sd15 --batch 8 --precision bf16 \
    --variants baseline ours ours:channels_last ours:channels_last:compile 2>&1 | tee "$OUT/train_sd15.txt"
