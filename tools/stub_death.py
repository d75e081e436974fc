"""What tritonserver says when a python stub dies: readiness, open streams, restarts (an experiment).

Serves the stand-in repository (tools/harness/standin.py, with a per-token delay so streams stay open),
kills a model's stub with SIGKILL once while idle and once while streams are open, and prints what
/v2/health/ready and /v2/models/<model>/ready answer, what the open streams got, and whether the
python backend started a new stub. Prints observations; asserts nothing.

Examples:
  python tools/stub_death.py                        # the ensemble's stub
  python tools/stub_death.py --model tensorrt_llm   # the engine's stub
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import serve
from harness import loadgen, standin

ROOT = Path(__file__).resolve().parent.parent


def get(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return f"{response.status} {response.read().decode()[:120]!r}"
    except urllib.error.HTTPError as error:
        return f"{error.code} {error.read().decode()[:120]!r}"
    except (urllib.error.URLError, OSError) as error:
        return f"no answer ({error})"


def readiness(http: str, model: str) -> str:
    return (f"/v2/health/live: {get(f'http://{http}/v2/health/live')}; "
            f"/v2/health/ready: {get(f'http://{http}/v2/health/ready')}; "
            f"/v2/models/{model}/ready: {get(f'http://{http}/v2/models/{model}/ready')}")


def watch(http: str, model: str, pid: int, seconds: float) -> None:
    """Print readiness and the stub's pid whenever either changes, for `seconds`."""
    last = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        now = (readiness(http, model), loadgen.stubs(pid).get(f"{model}_0_0"))
        if now != last:
            print(f"  t={seconds - (end - time.monotonic()):5.1f}s {now[0]}; {model} stub pid {now[1]}", flush=True)
            last = now
        time.sleep(0.5)


def kill_stub(pid: int, model: str) -> int:
    stub = loadgen.stubs(pid)[f"{model}_0_0"]
    os.kill(stub, signal.SIGKILL)
    print(f"  killed {model} stub pid {stub} (SIGKILL)", flush=True)
    return stub


def idle_kill(http: str, grpc: str, pid: int, log: Path, expectation: loadgen.Expectation, model: str,
              settle_s: float) -> None:
    logs = loadgen.LogWatch(log)
    print(f"\n1. idle: before: {readiness(http, model)}; stubs {loadgen.stubs(pid)}")
    kill_stub(pid, model)
    watch(http, model, pid, settle_s)
    for seed in range(2):
        print("  a stream afterwards:", loadgen.Streamer(grpc, "ensemble", expectation, 30).stream(seed, 16))
    watch(http, model, pid, 5)
    for line in logs.trouble():
        print(f"  log: {line[:240]}")


def busy_kill(http: str, grpc: str, pid: int, log: Path, expectation: loadgen.Expectation, model: str,
              streams: int, settle_s: float) -> None:
    logs = loadgen.LogWatch(log)
    print(f"\n2. {streams} streams open: before: {readiness(http, model)}; stubs {loadgen.stubs(pid)}")
    outcomes: list[loadgen.Outcome] = []
    workers = [threading.Thread(target=lambda seed=seed: outcomes.append(
        loadgen.Streamer(grpc, "ensemble", expectation, settle_s).stream(seed, 256)), daemon=True)
        for seed in range(streams)]
    for worker in workers:
        worker.start()
    time.sleep(2)
    kill_stub(pid, model)
    watch(http, model, pid, settle_s + 5)
    for worker in workers:
        worker.join(settle_s + 10)
    for outcome in outcomes:
        print(f"  open stream: {outcome.kind} after {outcome.tokens} pieces/tokens: {outcome.detail[:200]}")
    print(f"  {streams - len(outcomes)} streams still without an outcome")
    print("  a stream afterwards:", loadgen.Streamer(grpc, "ensemble", expectation, 30).stream(2, 16))
    print(f"  after: {readiness(http, model)}; stubs {loadgen.stubs(pid)}")
    for line in logs.trouble():
        print(f"  log: {line[:240]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "out" / "cpu")
    parser.add_argument("--model", default="ensemble", help="whose stub to kill (default ensemble)")
    parser.add_argument("--streams", type=int, default=4, help="streams open at the second kill (default 4)")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds to watch after each kill (default 20)")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="stub-death-"))
    log = ROOT / "out" / "stub-death-tritonserver.log"
    log.write_bytes(b"")
    try:
        # 40 ms a step: a 256-token stream stays open ~10 s, long enough to kill a stub under it
        repository = standin.layout(args.repository, scratch / "repository", per_token_delay_us=40000)
        ports = serve.Ports(18130, 18131, 18132)
        http, grpc = f"127.0.0.1:{ports.http}", f"127.0.0.1:{ports.grpc}"
        expectation = loadgen.Expectation.of(repository)
        with serve.running(repository, ports, log_file=log) as server:  # a fresh server for each kill
            idle_kill(http, grpc, server.process.pid, log, expectation, args.model, args.settle)
        with serve.running(repository, ports, log_file=log) as server:
            busy_kill(http, grpc, server.process.pid, log, expectation, args.model, args.streams, args.settle)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntritonserver log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
