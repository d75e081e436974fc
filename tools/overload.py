"""Drive the OpenAI gateway far past what it takes, against the stand-in engine, and check it sheds load well.

First what the server answers per second with the gateway's bound on requests in flight
(gateway/admission.py) is measured; then requests arrive at many times that rate, each streamed
through the gateway to a tritonserver whose tensorrt_llm is the stand-in (tools/harness/standin.py):
every accepted stream must end with exactly the stand-in's text (as tools/harness/gateway_load.py
checks it), every refused one must be a 429 (or 503) that comes at once, none may hang, the gateway's
memory must stay bounded, and /health must answer 200 after. Prints the figures; exit 1 when any
of that fails.

Examples:
  python tools/overload.py                 # 10x the rate a one-worker gateway answers at its default bound
  python tools/overload.py --multiple 20 --seconds 30 --workers 2
  python tools/overload.py --max-in-flight 4 --per-token-delay-us 5000 --tokens 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import serve
from harness import gateway_load, loadgen, standin

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from gateway.admission import default_max_in_flight  # noqa: E402  (the gateway's own default, not a copy)

REFUSED = (429, 503)


@dataclass
class Results:
    accepted: list[float] = field(default_factory=list)  # seconds to the stream's last event
    refused: dict[int, list[float]] = field(default_factory=dict)  # status -> seconds to the status line
    failures: list[str] = field(default_factory=list)  # a wrong text, another status, a broken or hung stream

    @property
    def sent(self) -> int:
        return len(self.accepted) + sum(len(each) for each in self.refused.values()) + len(self.failures)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


async def one(client: httpx.AsyncClient, url: str, expectation: loadgen.Expectation, seed: int, tokens: int,
              timeout: float, results: Results) -> None:
    began = time.monotonic()
    pieces: list[str] = []
    try:
        async with asyncio.timeout(timeout), client.stream("POST", f"{url}/v1/chat/completions",
                                                           json=gateway_load.request_body(seed, tokens)) as answer:
            if answer.status_code in REFUSED:
                results.refused.setdefault(answer.status_code, []).append(time.monotonic() - began)
                if "retry-after" not in answer.headers:
                    results.failures.append(f"a {answer.status_code} without Retry-After")
                return
            if answer.status_code != 200:
                results.failures.append(f"HTTP {answer.status_code}: {(await answer.aread())[:200]!r}")
                return
            async for line in answer.aiter_lines():
                outcome = gateway_load.read_line(line, expectation, seed, tokens, pieces)
                if outcome is None:
                    continue
                if outcome.kind == "ok":
                    results.accepted.append(time.monotonic() - began)
                elif outcome.kind == "error":
                    results.failures.append(f"seed {seed}: an error event: {outcome.detail}")
                else:
                    results.failures.append(f"seed {seed}: {outcome.detail}")
                return
        results.failures.append(f"seed {seed}: the stream ended without data: [DONE]")
    except TimeoutError:
        results.failures.append(f"seed {seed}: hung: no end in {timeout:.0f} s after {len(pieces)} chunks")
    except httpx.TransportError as error:
        results.failures.append(f"seed {seed}: {error!r}")


def client(connections: int) -> httpx.AsyncClient:
    # A pool as large as the load: a request waiting for a free connection would count the client's queue.
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(limits=limits, timeout=None)


async def capacity(url: str, expectation: loadgen.Expectation, in_flight: int, requests: int, tokens: int,
                   timeout: float) -> tuple[Results, float]:
    """What the server takes: `in_flight` clients, each sending its next request when its last is answered
    (never more than the bound at once), and the requests per second they get answered. With several
    workers the kernel does not spread connections evenly, so one worker may refuse while another has
    room: a refused client waits a little before it sends again."""
    results, seeds = Results(), iter(range(requests))
    async with client(in_flight) as http:

        async def client_loop() -> None:
            for seed in seeds:
                refused = sum(len(each) for each in results.refused.values())
                await one(http, url, expectation, seed, tokens, timeout, results)
                if sum(len(each) for each in results.refused.values()) > refused:
                    await asyncio.sleep(0.05)

        began = time.monotonic()
        await asyncio.gather(*(client_loop() for _ in range(in_flight)))
    return results, len(results.accepted) / (time.monotonic() - began)


async def overload(url: str, expectation: loadgen.Expectation, rate: float, seconds: float, tokens: int,
                   timeout: float, first_seed: int) -> tuple[Results, float]:
    """Requests arriving at `rate` per second for `seconds`, each sent on time whatever became of the
    others (an open loop: a server that slows down does not slow the arrivals, as with real users)."""
    results, tasks = Results(), []
    count = int(rate * seconds)
    async with client(count) as http:
        began = time.monotonic()
        for number in range(count):
            await asyncio.sleep(max(0.0, began + number / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(http, url, expectation, first_seed + number, tokens, timeout,
                                                 results)))
        await asyncio.gather(*tasks)
    return results, time.monotonic() - began


def report(results: Results, wall: float, rss: tuple[float, float], health: int, bound: int, served: float,
           rate: float, refusal_p99_ms: float) -> list[str]:
    """Prints the figures; returns what failed."""
    refused = [at for each in results.refused.values() for at in each]
    print(f"\n{rate:.0f} requests/s for {wall:.1f} s: {rate / served:.1f}x the {served:.1f}/s the server answers "
          f"with {bound} in flight")
    print(f"  sent      {results.sent}")
    print(f"  accepted  {len(results.accepted)}, each with its full text; latency p50 "
          f"{percentile(results.accepted, 0.5) * 1000:.0f} ms, p99 {percentile(results.accepted, 0.99) * 1000:.0f} ms")
    by_status = ", ".join(f"{status}: {len(each)}" for status, each in sorted(results.refused.items())) or "none"
    print(f"  refused   {len(refused)} ({by_status}); latency p50 {percentile(refused, 0.5) * 1000:.1f} ms, "
          f"p99 {percentile(refused, 0.99) * 1000:.1f} ms, max {max(refused, default=float('nan')) * 1000:.1f} ms")
    print(f"  failed    {len(results.failures)}")
    for failure in results.failures[:10]:
        print(f"    {failure}")
    print(f"  gateway RSS {rss[0]:.0f} MiB before, {rss[1]:.0f} MiB after")
    print(f"  /health after: {health}")
    problems = [f"{len(results.failures)} request(s) failed"] if results.failures else []
    if not refused:
        problems.append("nothing was refused: the load did not exceed the bound")
    elif percentile(refused, 0.99) * 1000 > refusal_p99_ms:
        problems.append(f"refusals p99 {percentile(refused, 0.99) * 1000:.1f} ms > {refusal_p99_ms:.0f} ms")
    if not results.accepted:
        problems.append("nothing was accepted")
    if health != 200:
        problems.append(f"/health answered {health} after the load")
    if rss[1] > 2 * rss[0]:
        problems.append(f"the gateway's memory more than doubled ({rss[0]:.0f} -> {rss[1]:.0f} MiB)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "out" / "cpu",
                        help="the built CPU repository to lay the stand-in over (default out/cpu; build it with "
                             "build/compile.py --gpu cpu)")
    parser.add_argument("--workers", type=int, default=1, help="gateway worker processes (default 1)")
    parser.add_argument("--max-in-flight", type=int,
                        help="the gateway's bound per worker (default: the gateway's own, from max_batch_size)")
    parser.add_argument("--multiple", type=float, default=10.0,
                        help="requests per second, as a multiple of what the server answers (default 10)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the overload lasts (default 10)")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per answer (default 64)")
    parser.add_argument("--per-token-delay-us", type=int, default=10_000,
                        help="the stand-in's pause per decode step: 10 ms, a GPU stream's 100 tokens/s (default)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a request counts as hung")
    parser.add_argument("--refusal-p99-ms", type=float, default=50.0, help="refusals slower than this at p99 fail "
                        "the run (default 50)")
    args = parser.parse_args(argv)
    if not (args.repository / "build.json").is_file():
        print(f"error: {args.repository} is not a built repository: run python build/compile.py --gpu cpu",
              file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="overload-"))
    log, gateway_log = scratch / "tritonserver.log", scratch / "gateway.log"
    ports, gateway_port = serve.Ports(18130, 18131, 18132), 18139
    url = f"http://127.0.0.1:{gateway_port}"
    options = ("--max-in-flight", str(args.max_in_flight)) if args.max_in_flight else ()
    try:
        repository = standin.layout(args.repository, scratch / "repository", args.per_token_delay_us)
        expectation = loadgen.Expectation.of(repository)
        limits = json.loads((repository / "build.json").read_text())["limits"]
        per_worker = args.max_in_flight or default_max_in_flight(limits["max_batch_size"], args.workers)
        bound = per_worker * args.workers
        print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; tensorrt_llm: stand-in engine, "
              f"{args.per_token_delay_us} us per token; gateway: {args.workers} worker(s), {per_worker} in flight "
              f"each; answers of {args.tokens} tokens; logs: {scratch}", flush=True)
        with serve.running(repository, ports, log_file=log):
            gateway = gateway_load.start(repository, f"127.0.0.1:{ports.http}", gateway_port, "direct",
                                         args.workers, gateway_log, options)
            try:
                gateway_load.wait_ready(gateway, url)
                measured, served = asyncio.run(capacity(url, expectation, bound, 4 * bound, args.tokens,
                                                        args.timeout))
                if measured.failures:
                    print(f"error: at {bound} in flight, requests failed: {measured.failures[:5]}", file=sys.stderr)
                    return 1
                shed = sum(len(each) for each in measured.refused.values())
                print(f"the server answers {served:.1f} requests/s with {bound} clients at once ({shed} of their "
                      f"requests refused by a worker already at its bound)", flush=True)
                before = loadgen.tree_rss_mib(gateway.pid)
                rate = args.multiple * served
                results, wall = asyncio.run(overload(url, expectation, rate, args.seconds, args.tokens, args.timeout,
                                                     4 * bound))
                after = loadgen.tree_rss_mib(gateway.pid)
                health = httpx.get(f"{url}/health", timeout=10).status_code
            finally:
                gateway_load.stop(gateway)
        problems = report(results, wall, (before, after), health, bound, served, rate, args.refusal_p99_ms)
    finally:
        shutil.rmtree(scratch / "repository", ignore_errors=True)
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
