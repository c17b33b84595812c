#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-quantize, llama-perplexity, llama-imatrix) from the
# sources vendored in the llama-cpp-python sdist that edgellm runs on, so benchmarks compare like with like.
# Prints the folder that holds the binaries and convert_hf_to_gguf.py. Cached: a second call builds nothing.
#   usage: scripts/llamacpp_tools.sh            -> prints the tools root
#   env:   EDGELLM_TOOLS_CACHE (default ~/.cache/edgellm-tools), LLAMA_CPP_PYTHON_VERSION (default: installed)
#          LLAMACPP_SERVER=1: also build llama-server (without its web UI), the yardstick of `edgellm serve`
#          LLAMACPP_RPC=1: build only llama.cpp's RPC backend, into build-rpc/ (ggml-rpc-server for `edgellm worker`,
#          libggml-rpc.so that `--rpc` loads next to llama-cpp-python's own ggml); prints that bin folder
set -euo pipefail
py=${PYTHON:-python3}
ver=${LLAMA_CPP_PYTHON_VERSION:-$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}
cache=${EDGELLM_TOOLS_CACHE:-$HOME/.cache/edgellm-tools}
root="$cache/llama_cpp_python-$ver"
src="$root/vendor/llama.cpp"
build="$src/build"
targets=(llama-bench llama-quantize llama-perplexity llama-imatrix)
server=(-DLLAMA_BUILD_SERVER=OFF)
files=("${targets[@]}")
if [ "${LLAMACPP_RPC:-0}" = 1 ]; then
  build="$src/build-rpc"
  targets=(ggml-rpc-server ggml-rpc)
  server=(-DLLAMA_BUILD_SERVER=OFF -DGGML_RPC=ON)
  files=(ggml-rpc-server libggml-rpc.so)
fi
bin="$build/bin"
if [ "${LLAMACPP_SERVER:-0}" = 1 ]; then
  targets+=(llama-server)
  files+=(llama-server)
  server=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF)  # the UI would be downloaded
fi

have_all() { for t in "${files[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
where() { if [ "${LLAMACPP_RPC:-0}" = 1 ]; then echo "$bin"; else echo "$src"; fi; }
if have_all; then where; exit 0; fi

mkdir -p "$cache"
if [ ! -d "$src" ]; then
  tmp=$(mktemp -d "$cache/.dl.XXXX")
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$ver".tar.gz -C "$tmp"
  rm -rf "$root"; mv "$tmp/llama_cpp_python-$ver" "$root"; rm -rf "$tmp"
fi
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF "${server[@]}" ${CMAKE_ARGS:-} >&2
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)" >&2
have_all
where
