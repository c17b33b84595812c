#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-quantize, llama-perplexity, llama-imatrix, llama-gguf-split) from the
# sources vendored in the llama-cpp-python sdist that edgellm runs on, so benchmarks compare like with like.
# Prints the folder that holds the binaries and convert_hf_to_gguf.py. Cached: a second call builds nothing.
#   usage: scripts/llamacpp_tools.sh            -> prints the tools root
#   env:   EDGELLM_TOOLS_CACHE (default ~/.cache/edgellm-tools), LLAMA_CPP_PYTHON_VERSION (default: installed)
#          LLAMACPP_SERVER=1: also build llama-server (without its web UI), the yardstick of `edgellm serve`
#          LLAMACPP_RPC=1: build only llama.cpp's RPC backend, into build-rpc/ (ggml-rpc-server for `edgellm worker`,
#          libggml-rpc.so that `--rpc` loads next to llama-cpp-python's own ggml); prints that bin folder
#          LLAMACPP_VULKAN=1: build only the shared libraries (libllama, libggml*) with the Vulkan backend, into
#          build-vulkan/; prints that bin folder, which LLAMA_CPP_LIB_PATH takes (needs glslc, libvulkan-dev,
#          spirv-headers; Debian/Ubuntu: apt-get install glslc libvulkan-dev spirv-headers mesa-vulkan-drivers)
set -euo pipefail
py=${PYTHON:-python3}
ver=${LLAMA_CPP_PYTHON_VERSION:-$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')}
cache=${EDGELLM_TOOLS_CACHE:-$HOME/.cache/edgellm-tools}
root="$cache/llama_cpp_python-$ver"
src="$root/vendor/llama.cpp"
build="$src/build"
targets=(llama-bench llama-quantize llama-perplexity llama-imatrix llama-gguf-split)
server=(-DLLAMA_BUILD_SERVER=OFF)
files=("${targets[@]}")
if [ "${LLAMACPP_RPC:-0}" = 1 ]; then
  build="$src/build-rpc"
  targets=(ggml-rpc-server ggml-rpc)
  server=(-DLLAMA_BUILD_SERVER=OFF -DGGML_RPC=ON)
  files=(ggml-rpc-server libggml-rpc.so)
fi
if [ "${LLAMACPP_VULKAN:-0}" = 1 ]; then
  build="$src/build-vulkan"
  targets=(llama)
  server=(-DLLAMA_BUILD_SERVER=OFF -DGGML_VULKAN=ON -DBUILD_SHARED_LIBS=ON)
  files=(libllama.so libggml.so libggml-base.so libggml-vulkan.so)
fi
bin="$build/bin"
if [ "${LLAMACPP_SERVER:-0}" = 1 ]; then
  targets+=(llama-server)
  files+=(llama-server)
  server=(-DLLAMA_BUILD_SERVER=ON -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF)  # the UI would be downloaded
fi

have_all() { for t in "${files[@]}"; do [ -x "$bin/$t" ] || return 1; done; }
where() { if [ "${LLAMACPP_RPC:-0}${LLAMACPP_VULKAN:-0}" != 00 ]; then echo "$bin"; else echo "$src"; fi; }
if have_all; then where; exit 0; fi

mkdir -p "$cache"
if [ ! -d "$src" ]; then
  tmp=$(mktemp -d "$cache/.dl.XXXX")
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$tmp" >&2
  tar -xzf "$tmp"/llama_cpp_python-"$ver".tar.gz -C "$tmp"
  rm -rf "$root"; mv "$tmp/llama_cpp_python-$ver" "$root"; rm -rf "$tmp"
fi
if [ "${LLAMACPP_VULKAN:-0}" = 1 ]; then
  for tool in glslc; do command -v $tool >/dev/null || { echo "llamacpp_tools: $tool is missing (apt-get install glslc libvulkan-dev spirv-headers)" >&2; exit 1; }; done
  # Vulkan headers before 1.3.261 (Debian 12 ships 1.3.239) lack VK_EXT_layer_settings, which ggml-vulkan uses
  # only to turn on best-practice checks in the validation layer: without those headers the block is cut out.
  hpp=$({ echo '#include <vulkan/vulkan.hpp>' | ${CXX:-c++} -E -x c++ - 2>/dev/null || true; } | awk -F'"' '/vulkan_structs.hpp"/ {print $2; exit}')
  vk="$src/ggml/src/ggml-vulkan/ggml-vulkan.cpp"
  if [ -n "$hpp" ] && ! grep -q LayerSettingEXT "$hpp" && grep -q 'vk::LayerSettingEXT' "$vk"; then
    echo "llamacpp_tools: $hpp predates VK_EXT_layer_settings: building ggml-vulkan without validation-layer settings" >&2
    sed -i -e '/VkBool32 enable_best_practice = layer_settings;/d' \
      -e '/std::vector<vk::LayerSettingEXT> settings = {/,/vk::LayerSettingsCreateInfoEXT layer_setting_info(settings);/d' \
      -e 's/, extensions, &layer_setting_info);/, extensions);/' "$vk"
  fi
fi
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF "${server[@]}" ${CMAKE_ARGS:-} >&2
cmake --build "$build" --target "${targets[@]}" -j "$(nproc)" >&2
have_all
where
