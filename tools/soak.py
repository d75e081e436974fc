"""Soak the ensemble against the no-cost stand-in engine: streams at concurrency 1, 8, 32, 64, in turn.

Serves a copy of a built repository with tensorrt_llm replaced by the stand-in (tools/harness/standin.py),
so tokens come as fast as the server around the engine can take them. Every stream must end with its
final response and exactly the text the tokenizer decodes for the ids the stand-in emits; a stream
with no response for --stream-timeout seconds is hung. The python stubs' pids are watched (a missing
or changed pid is a stub death) and so is tritonserver's log. Prints a summary; exits 1 on any
failure, 2 if the server cannot be started.

Examples:
  python tools/soak.py                                  # 600 s, phases of 30 s at 1, 8, 32, 64 streams
  python tools/soak.py --duration 180 --phase-seconds 15
  python tools/soak.py --levels 64 --duration 60        # one level only
  python tools/soak.py --per-token-delay-us 5000        # an engine with a 5 ms decode step
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import serve
from harness import loadgen, standin

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Report:
    tally: loadgen.Tally = field(default_factory=loadgen.Tally)
    stub_events: list[str] = field(default_factory=list)  # deaths and restarts seen in the pids
    log_lines: list[str] = field(default_factory=list)  # tritonserver's words about stubs
    phases: list[str] = field(default_factory=list)
    server_exit: int | None = None

    @property
    def failed(self) -> bool:
        return bool(self.tally.failures or self.stub_events or self.log_lines or self.server_exit is not None)

    def summary(self) -> str:
        lines = [f"{self.tally.summary()}; stub deaths/restarts: {len(self.stub_events)}; "
                 f"stub lines in the tritonserver log: {len(self.log_lines)}"]
        lines += [f"  first {kind}: {detail[:300]}" for kind, detail in self.tally.examples.items()]
        lines += [f"  {event}" for event in self.stub_events[:10]]
        lines += [f"  log: {line[:300]}" for line in self.log_lines[:10]]
        if self.server_exit is not None:
            lines.append(f"  tritonserver exited with code {self.server_exit}")
        lines.append("FAILED" if self.failed else "PASSED")
        return "\n".join(lines)


class Watcher:
    """Looks at the stubs' pids and the log once a second, from a thread, while the load runs."""

    def __init__(self, process: subprocess.Popen, log: Path, report: Report):
        self.process, self.report = process, report
        self.watch = loadgen.LogWatch(log)
        self.stubs = loadgen.stubs(process.pid)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def look(self) -> None:
        now = loadgen.stubs(self.process.pid)
        for event in loadgen.stub_changes(self.stubs, now):
            self.report.stub_events.append(f"{time.strftime('%H:%M:%S')} {event}")
        self.stubs = now  # each death once; a restarted stub's new pid is the one to watch from now on
        self.report.log_lines += self.watch.trouble()
        if self.process.poll() is not None:
            self.report.server_exit = self.process.returncode

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.look()

    def __enter__(self) -> Watcher:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.look()


def soak(process: subprocess.Popen, log: Path, url: str, expectation: loadgen.Expectation, levels: list[int],
         phase_s: float, duration_s: float, tokens: int, timeout: float, verbose: bool = True) -> Report:
    """Streams through the ensemble, `phase_s` at each concurrency in turn, for `duration_s` in all."""
    report = Report()
    seeds = itertools.count()  # a different start in the stand-in's cycle per stream, so crossed streams show
    end = time.monotonic() + duration_s
    with Watcher(process, log, report):
        for concurrency in itertools.cycle(levels):
            if time.monotonic() >= end or report.server_exit is not None:
                break
            phase = loadgen.Tally()
            wall = loadgen.drive(url, "ensemble", expectation, concurrency, tokens, phase,
                                 loadgen.until(min(end, time.monotonic() + phase_s)), timeout, seeds)
            for kind, number in phase.outcomes.items():
                report.tally.outcomes[kind] += number
            report.tally.tokens += phase.tokens
            report.tally.received += phase.received
            for kind, detail in phase.examples.items():
                report.tally.examples.setdefault(kind, detail)
            line = f"concurrency {concurrency:>3}: {phase.summary()}, {phase.received / wall:.0f} tokens/s"
            report.phases.append(line)
            if verbose:
                print(f"  {time.strftime('%H:%M:%S')} {line}", flush=True)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "out" / "cpu",
                        help="built repository (compile.py --gpu cpu); it is copied, never changed")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load in all (default 600)")
    parser.add_argument("--levels", type=lambda text: [int(c) for c in text.split(",")], default=[1, 8, 32, 64],
                        help="concurrency levels, cycled (default 1,8,32,64)")
    parser.add_argument("--phase-seconds", type=float, default=30.0, help="seconds at each level (default 30)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per stream (default 256)")
    parser.add_argument("--stream-timeout", type=float, default=30.0,
                        help="seconds with no response after which a stream is hung (default 30)")
    parser.add_argument("--per-token-delay-us", type=int, default=0, help="stand-in's pause per step (default 0)")
    parser.add_argument("--grpc-port", type=int, default=18121)
    parser.add_argument("--http-port", type=int, default=18120)
    parser.add_argument("--metrics-port", type=int, default=18122)
    parser.add_argument("--log", type=Path, default=ROOT / "out" / "soak-tritonserver.log", help="tritonserver log")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        repository = standin.layout(args.repository, scratch / "repository", args.per_token_delay_us)
        expectation = loadgen.Expectation.of(repository)
        args.log.parent.mkdir(parents=True, exist_ok=True)
        args.log.write_bytes(b"")
        ports = serve.Ports(args.http_port, args.grpc_port, args.metrics_port)
        print(f"soak: {args.duration:.0f} s, levels {args.levels}, {args.phase_seconds:.0f} s each, "
              f"{args.tokens}-token streams; tritonserver log {args.log}", flush=True)
        with serve.running(repository, ports, log_file=args.log) as server:
            report = soak(server.process, args.log, f"127.0.0.1:{ports.grpc}", expectation, args.levels,
                          args.phase_seconds, args.duration, args.tokens, args.stream_timeout)
    except (standin.StandinError, serve.ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
