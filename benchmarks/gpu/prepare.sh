#!/usr/bin/env bash
# Packs .gpu/ (git-ignored): what benchmarks/gpu/device.sh needs on the GPU machine, which can
# fetch nothing. Run here, from anywhere in the checkout.
# About 5 minutes on 2 cores; the kit is about 27 MiB (the checkout itself about 15).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
KIT=.gpu
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
LLAMA=$(version llama-cpp-python)

rm -rf "$KIT"
mkdir -p "$KIT/wheels"
# pure-Python dependencies the GPU image lacks, at the versions installed here
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d "$KIT/wheels" \
    "gguf==$(version gguf)" "diskcache==$(version diskcache)" \
    "platformdirs==$(version platformdirs)" "tomli-w==$(version tomli-w)"

# llama-cpp-python's source without its git history and llama.cpp's test models, docs, tests and
# web UI: the whole sdist is over the 64 MiB a device call carries
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA" -d "$tmp"
tar xzf "$tmp/llama_cpp_python-$LLAMA.tar.gz" -C "$tmp"
src="$tmp/llama_cpp_python-$LLAMA"
rm -rf "$src"/vendor/llama.cpp/{models,docs,media,benches,tests,conversion,gguf-py,tools/ui,.github} \
    "$src"/{.git,docs,docker,examples,tests}
tar czf "$KIT/llama_cpp_python-$LLAMA.tar.gz" -C "$tmp" "llama_cpp_python-$LLAMA"

# a CPU build from that source (a py3-none wheel: the GPU image's Python is 3.12): the tokenizer
# for the torch backend while the CUDA build runs there, and a check that the trimmed source still
# builds; no -march=native, as the GPU machine's processor is not this one
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF" \
    python -m pip wheel -q --no-deps "$KIT/llama_cpp_python-$LLAMA.tar.gz" -w "$KIT/wheels"
git describe --always --dirty > "$KIT/commit"
du -sh "$KIT"
