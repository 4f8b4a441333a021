#!/usr/bin/env bash
# Measures localspec on a GPU machine that can fetch nothing, from the kit benchmarks/gpu/prepare.sh
# packs into .gpu/. Through the device tool: run with carry [".gpu"], timeout_s 600 and
#     bash benchmarks/gpu/device.sh
# Stages, each written to $OUT as it ends (a stage that fails or runs out of time leaves the others):
#   1. the torch backend on CUDA: none, auto, layerskip, polybasic (llama.cpp's CPU build tokenizes)
#   2. meanwhile, llama-cpp-python built with CUDA from the carried source (build.log)
#   3. the llama.cpp backend with every layer on the GPU: our methods and llama-cpp-python's own
# on the demo model widened to $MB MiB of weights (a decode on an H200 reads 4 GiB in about 1 ms),
# over every sixth prompt of benchmarks/prompts.jsonl (11 prompts, every category).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
PY=${PY:-python3}  # the GPU image's, which has torch
TORCH_DEVICE=${TORCH_DEVICE:-cuda}  # cpu for a dry run of this script on a CPU machine
MB=${MB:-4096}
N=${N:-96}
BUILD_SECONDS=${BUILD_SECONDS:-360}
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1 LOCALSPEC_CACHE_DIR=/tmp/localspec-cache
stamp() { echo "== $(date -u +%H:%M:%S) $*"; }

stamp "kit $(cat .gpu/commit 2>/dev/null)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
nproc
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .gpu/wheels/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site"

stamp "building llama-cpp-python with CUDA (at most ${BUILD_SECONDS} s)"
( CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAVA_BUILD=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(($(nproc) - 2)) \
  timeout "$BUILD_SECONDS" nice -n 19 $PY -m pip install --no-index --no-deps --no-build-isolation \
      --no-cache-dir --target /tmp/cuda-site .gpu/llama_cpp_python-*.tar.gz > "$OUT/build.log" 2>&1
  echo "exit $?" >> "$OUT/build.log" ) &
build=$!

awk 'NR % 6 == 1' benchmarks/prompts.jsonl > /tmp/prompts-11.jsonl
$PY -m localspec widen localspec/demo/localspec-demo-6m-q8_0.gguf /tmp/wide.gguf --target-mb "$MB" || exit 1

stamp "torch backend on $TORCH_DEVICE"
timeout 240 $PY -m localspec bench -m /tmp/wide.gguf --prompts /tmp/prompts-11.jsonl \
    --backend torch --device "$TORCH_DEVICE" --methods none,auto,layerskip,polybasic -n "$N" \
    --json "$OUT/torch-$TORCH_DEVICE.json"
rm -f "$OUT/torch-$TORCH_DEVICE.png"  # the device tool brings back 8 files at most

stamp "waiting for the CUDA build"
wait "$build"
tail -n 3 "$OUT/build.log"
if $PY -c "import sys; sys.path.insert(0, '/tmp/cuda-site'); import llama_cpp as lc; assert lc.llama_supports_gpu_offload()"; then
    stamp "llama.cpp backend, every layer on the GPU"
    PYTHONPATH="$PWD:/tmp/cuda-site:/tmp/site" timeout 170 $PY -m localspec bench -m /tmp/wide.gguf \
        --prompts /tmp/prompts-11.jsonl --gpu-layers -1 \
        --methods none,recycling,retrieval,auto,peer-pld,peer-ar -n "$N" --json "$OUT/llamacpp-cuda.json"
else
    stamp "no CUDA build of llama.cpp: stage 3 skipped"
fi
stamp done
