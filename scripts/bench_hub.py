"""What planning a hub repo reads, and how long one command from a hub id to an answer takes, on the test hub.

    .venv/bin/python scripts/bench_hub.py [--ram 8,16,64] [--no-run]

Serves tests/hubserver.py's fake Hugging Face on localhost with a Llama-3-8B-shaped repo of GGUF levels (real
headers with the Llama 3 vocabulary, sparse data: never downloaded) and plans it for machines of several RAM
sizes: the level chosen, the bytes and requests planning read against the repo's size. Then times
`edgellm run HUB_ID` end to end (plan, pull, load, answer) for a repo of the real SmolLM2 Q4_1 and for a tiny
Qwen2 checkpoint (plan, pull, convert, quantize one level, load, answer), and the second run of each (from the
store). The hub is on this machine: the times are edgellm's own work, not a network's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test hub and the offline fixtures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ram", default="6,8,16,64", help="machines to plan for: free RAM in GiB, comma-separated")
    ap.add_argument("--no-run", action="store_true", help="only plan; do not time the one-command runs")
    args = ap.parse_args()

    import fixtures
    from hubserver import Hub, HubServer, Repo
    from hubtesting import llama3_8b_repo

    from edgellm.plan import hardware
    from edgellm.fsutil import human_bytes

    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    env = {"EDGELLM_HOME": tmp / "home", "HF_HOME": tmp / "hf", "HF_HUB_CACHE": tmp / "hf" / "hub",
           "MODELSCOPE_CACHE": tmp / "ms", "HF_XET_CLIENT_RETRY_MAX_ATTEMPTS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}  # fmt: skip
    os.environ.update({k: str(v) for k, v in env.items()})
    from huggingface_hub import constants

    constants.HF_HUB_CACHE = str(env["HF_HUB_CACHE"])
    hub = Hub()
    hub.repos["bartowski/Llama-3-8B-Instruct-GGUF"] = llama3_8b_repo()
    hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = Repo({"SmolLM2-135M-Instruct-Q4_1.gguf": fixtures.smollm2_gguf().read_bytes()})
    hub.repos["Qwen/tiny-qwen2"] = Repo({p.name: p.read_bytes() for p in fixtures.qwen2_checkpoint().iterdir() if p.is_file()})
    with HubServer(hub) as url:
        constants.ENDPOINT = url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        from edgellm.hub.download import open_repo
        from edgellm.hub.remote_plan import plan_repo

        print("plan bartowski/Llama-3-8B-Instruct-GGUF (7 levels, Llama 3 vocabulary: a 7.5 MiB header each)")
        for ram in (float(x) for x in args.ram.split(",")):
            hub.forget()
            start = time.perf_counter()
            rp = plan_repo(open_repo("bartowski/Llama-3-8B-Instruct-GGUF"), hardware.synthetic(ram=int(ram * (1 << 30))))
            took = time.perf_counter() - start
            print(f"  {ram:g} GiB RAM: {rp.level or 'nothing fits'}; read {human_bytes(rp.fetched.bytes)} in "
                  f"{rp.fetched.requests} ranged requests ({rp.headers_read} header(s)) of {human_bytes(rp.repo_size)} "
                  f"({rp.fetched.bytes / rp.repo_size:.5%}); {took:.2f} s")  # fmt: skip
        if args.no_run:
            return
        exe = str(Path(sys.executable).parent / "edgellm")
        run_env = {**os.environ, "HF_ENDPOINT": url}
        for repo in ("someone/SmolLM2-135M-Instruct-GGUF", "Qwen/tiny-qwen2"):
            for attempt in ("first run", "second run"):
                start = time.perf_counter()
                r = subprocess.run([exe, "run", repo, "-p", "What is the capital of France? Answer in one sentence.",
                                    "--temp", "0", "-n", "16"], env=run_env, capture_output=True, text=True)  # fmt: skip
                took = time.perf_counter() - start
                status = "ok" if r.returncode == 0 else f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1]}"
                print(f"edgellm run {repo} ({attempt}): {took:.1f} s, {status}")


if __name__ == "__main__":
    main()
