#!/usr/bin/env bash
# Check edgellm's hardware detection, planner and runtime on a real NVIDIA GPU, on a machine with no network.
#
#   here (package index reachable):  scripts/gpu_check.sh prepare   -> build/gpu_carry/ (~50 MB: the llama-cpp-python
#                                    sdist, the wheels to build and run it, the Llama 3 tokenizer files). Prepare with
#                                    the same Python version as the GPU machine's python3 (binary wheels).
#   there (GPU, offline, carrying build/gpu_carry with the working tree):
#                                    scripts/gpu_check.sh            = build + check
#                                    scripts/gpu_check.sh build      venv + llama-cpp-python with CUDA for this GPU's
#                                                                    architecture only (kept in build/gpu_venv)
#                                    scripts/gpu_check.sh check      a Llama-3-8B-shaped Q4_K_M (random weights, real
#                                                                    shape and tokenizer), then `edgellm hw`, `plan`, and
#                                                                    `run` with full and partial offload; prints planned
#                                                                    vs NVML-measured VRAM and tokens/s
# env: PYTHON (default python3), GPU_CARRY (default build/gpu_carry), GPU_SHAPE (default llama3-8b)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
carry=${GPU_CARRY:-build/gpu_carry}
venv=build/gpu_venv
model_dir=build/gpu_model
shape=${GPU_SHAPE:-llama3-8b}
# what edgellm hw/plan/run import, what llama-cpp-python and gguf need, and what builds the sdist
run_wheels=(numpy typing-extensions diskcache jinja2 markupsafe click rich markdown-it-py mdurl pygments psutil
  platformdirs nvidia-ml-py gguf pyyaml requests urllib3 idna certifi charset-normalizer tqdm)
build_wheels=(scikit-build-core pathspec packaging)

prepare() {
  local ver
  ver=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
  mkdir -p "$carry/wheels" "$carry/tests-cache"
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$carry/wheels"
  # The sdist is 77 MB; without llama.cpp's vocab test models, docs, media and git metadata it is ~25 MB.
  local tmp sdist="$carry/wheels/llama_cpp_python-$ver.tar.gz"
  tmp=$(mktemp -d)
  tar -xzf "$sdist" -C "$tmp"
  rm -rf "$tmp/llama_cpp_python-$ver/.git" "$tmp/llama_cpp_python-$ver/vendor/llama.cpp/"{models,docs,media}
  tar -czf "$sdist" -C "$tmp" "llama_cpp_python-$ver"
  rm -rf "$tmp"
  "$py" -m pip download -q --only-binary :all: -d "$carry/wheels" "${build_wheels[@]}" "${run_wheels[@]}"
  echo "$ver" > "$carry/llama-cpp-python.version"
  # the Llama 3 tokenizer, where tests/fixtures.py looks for it (EDGELLM_TEST_CACHE)
  "$py" -c 'import sys; sys.path.insert(0, "tests"); import fixtures; print(fixtures.llama3_tokenizer_dir())' >/dev/null
  cp -r "${EDGELLM_TEST_CACHE:-$HOME/.cache/edgellm-tests}/llama3-tokenizer" "$carry/tests-cache/"
  du -sh "$carry"
  echo "carry $carry with the working tree, then run scripts/gpu_check.sh there"
}

build() {
  command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 1; }
  command -v nvcc >/dev/null || { echo "gpu_check: no nvcc: the CUDA toolkit is needed to build llama.cpp" >&2; exit 1; }
  [ -d "$carry/wheels" ] || { echo "gpu_check: $carry is missing: run 'scripts/gpu_check.sh prepare' where pip works" >&2; exit 1; }
  local arch ver
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  ver=$(cat "$carry/llama-cpp-python.version")
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null; then
    echo "gpu_check: $venv already has a CUDA llama-cpp-python"; return
  fi
  "$py" -m venv "$venv"
  local pip=("$venv/bin/python" -m pip install -q --no-index --find-links "$carry/wheels")
  "${pip[@]}" "${build_wheels[@]}" "${run_wheels[@]}"
  echo "gpu_check: building llama-cpp-python $ver with CUDA for sm_$arch ($(nproc) jobs)"
  time CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAMA_CURL=OFF" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "${pip[@]}" --no-build-isolation --no-deps "llama-cpp-python==$ver"
  "$venv/bin/python" -c 'import llama_cpp, sys; ok = llama_cpp.llama_supports_gpu_offload(); print("GPU offload:", ok); sys.exit(not ok)'
}

check() {
  [ -x "$venv/bin/python" ] || build
  export PYTHONPATH=$PWD EDGELLM_TEST_CACHE=$PWD/$carry/tests-cache EDGELLM_HOME=$PWD/build/gpu_home
  local model="$model_dir/$shape-Q4_K_M.gguf" ed=("$venv/bin/python" -m edgellm.cli)
  if [ ! -f "$model" ]; then
    mkdir -p "$model_dir"
    "$venv/bin/python" -c 'import sys; sys.path.insert(0, "tests"); from pathlib import Path; from fixtures import write_llama3_shaped_gguf as w
w(Path(sys.argv[1] + ".part"), sys.argv[2], "Q4_K_M", fill="random"); Path(sys.argv[1] + ".part").rename(sys.argv[1])' "$model" "$shape"
  fi
  echo "== edgellm hw";                       "${ed[@]}" hw
  echo "== edgellm plan (this GPU)";          "${ed[@]}" plan "$model"
  echo "== edgellm plan --vram 3G (partial)"; "${ed[@]}" plan "$model" --vram 3G
  local partial
  partial=$("${ed[@]}" plan "$model" --vram 3G --json | "$venv/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["n_gpu_layers"])')
  echo "== edgellm run (full offload)";       "${ed[@]}" run "$model" -p "Tell me a story." -n 64 --seed 1
  echo "== edgellm run --ngl $partial";       "${ed[@]}" run "$model" -p "Tell me a story." -n 64 --seed 1 --ngl "$partial"
  echo "== planned vs measured"
  "$venv/bin/python" - "$model" <<'EOF'
import random, sys, threading, time

import pynvml

from edgellm.hardware import detect
from edgellm.models import resolve_model
from edgellm.plan import make_plan
from edgellm.runtime import Engine, Sampling

GIB = 1 << 30
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
used = lambda: pynvml.nvmlDeviceGetMemoryInfo(gpu).used
ref, hw = resolve_model(sys.argv[1]), detect()
plans = {"full": make_plan(ref, hw, ctx=8192), "partial": make_plan(ref, hw, ctx=8192, vram=3 * GIB)}
print(f"{'offload':8} {'layers':>7} {'planned VRAM':>13} {'measured':>9} {'ratio':>6} {'planned RAM':>12} {'pp tok/s':>9} {'tg tok/s':>9}")
for label, plan in plans.items():
    before, peak, stop = used(), [0], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            time.sleep(0.01)

    threading.Thread(target=poll, daemon=True).start()
    with Engine.load(plan) as e:
        rng = random.Random(0)
        list(e.stream_tokens([rng.randrange(e.n_vocab) for _ in range(512)], Sampling(temperature=0, max_tokens=1)))
        pp = e.last_stats.prompt_tps
        e.reset()
        list(e.stream_prompt("Once upon a time", Sampling(max_tokens=129, ignore_eos=True, seed=1)))
        tg = e.last_stats.gen_tps
        layers = e.info.n_gpu_layers
    stop.set()
    time.sleep(0.05)
    measured = peak[0] - before  # includes the CUDA context, which the plan leaves to its safety margin
    planned = plan.memory.vram
    print(f"{label:8} {layers:>4}/{plan.n_layers + 1:<2} {planned / GIB:11.2f} G {measured / GIB:7.2f} G {measured / planned:6.2f} "
          f"{plan.memory.ram / GIB:10.2f} G {pp:9.1f} {tg:9.1f}")
EOF
}

case "${1:-all}" in
  prepare) prepare ;;
  build) build ;;
  check) check ;;
  all) build; check ;;
  *) echo "usage: scripts/gpu_check.sh [prepare|build|check]" >&2; exit 2 ;;
esac
