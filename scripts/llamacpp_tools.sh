#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-quantize, llama-perplexity, llama-imatrix) from the
# sources vendored in the llama-cpp-python sdist that edgellm runs on, so benchmarks compare like with like.
# Prints the folder that holds the binaries and convert_hf_to_gguf.py. Cached: a second call builds nothing.
#   usage: scripts/llamacpp_tools.sh            -> prints the tools root
#   env:   EDGELLM_TOOLS_CACHE (default ~/.cache/edgellm-tools), LLAMA_CPP_PYTHON_VERSION (default: installed)
#          LLAMACPP_SERVER=1: also build llama-server (without its web UI), the yardstick of `edgellm serve`
set -euo pipefail
py=${PYTHON:-python3}
ver=${LLAMA_CPP_PYTHON_VERSION:-$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}
cache=${EDGELLM_TOOLS_CACHE:-$HOME/.cache/edgellm-tools}
root="$cache/llama_cpp_python-$ver"
src="$root/vendor/llama.cpp"
bin="$src/build/bin"
targets=(llama-bench llama-quantize llama-perplexity llama-imatrix)
server=(-DLLAMA_BUILD_SERVER=OFF)
if [ "${LLAMACPP_SERVER:-0}" = 1 ]; then
  targets+=(llama-server)
  server=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF)  # the UI would be downloaded
fi

have_all() { for t in "${targets[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
if have_all; then echo "$src"; exit 0; fi

mkdir -p "$cache"
if [ ! -d "$src" ]; then
  tmp=$(mktemp -d "$cache/.dl.XXXX")
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$ver".tar.gz -C "$tmp"
  rm -rf "$root"; mv "$tmp/llama_cpp_python-$ver" "$root"; rm -rf "$tmp"
fi
cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF "${server[@]}" ${CMAKE_ARGS:-} >&2
cmake --build "$src/build" --target "${targets[@]}" -j "$(nproc)" >&2
have_all
echo "$src"
