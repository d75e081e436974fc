"""Server-sent-event streams through the OpenAI gateway against the stand-in engine, each checked in full.

The gateway-side twin of loadgen.Streamer (same Tally, same expectations): every stream's text
must be exactly the decode of the ids the stand-in emits for its seed (tools/harness/standin.py), whichever
path the gateway takes to Triton. Used by tools/bench.py --ceiling --gateway.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from harness import loadgen

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "standin"  # --model-name: the stand-in is not the model build.json names


def start(repository: Path, triton_http: str, port: int, path: str, workers: int, log: Path,
          options: tuple[str, ...] = ()) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway", "--repository", str(repository), "--triton",
                                 triton_http, "--port", str(port), "--path", path, "--workers", str(workers),
                                 "--model-name", MODEL_NAME, *options], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the gateway was not ready in {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """The gateway's CPU: its main process and, with --workers, every worker process under it."""
    return sum(loadgen.cpu_seconds(each) or 0.0 for each in [pid, *loadgen.children(pid)])


def request_body(seed: int, tokens: int) -> dict:
    """The chat stream every load here sends: the stand-in's answer to it is known for each seed."""
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": loadgen.PROMPT}], "max_tokens": tokens,
            "temperature": 0, "seed": seed, "stream": True}


def read_line(line: str, expectation: loadgen.Expectation, seed: int, tokens: int,
              pieces: list[str]) -> loadgen.Outcome | None:
    """One line of the stream: its piece of text goes to `pieces`; the stream's outcome once it has one
    (the text checked at data: [DONE], or an error event), else None."""
    if not line.startswith("data: "):
        return None
    data = line[len("data: "):]
    if data == "[DONE]":
        return check(expectation, seed, tokens, pieces)
    chunk = json.loads(data)
    if "error" in chunk:
        return loadgen.Outcome("error", len(pieces), chunk["error"]["message"])
    pieces.append(chunk["choices"][0]["delta"].get("content") or "")
    return None


def stream(client: httpx.Client, url: str, expectation: loadgen.Expectation, seed: int, tokens: int,
           timeout: float) -> loadgen.Outcome:
    pieces: list[str] = []
    try:
        with client.stream("POST", f"{url}/v1/chat/completions", json=request_body(seed, tokens),
                           timeout=timeout) as response:
            if response.status_code != 200:
                return loadgen.Outcome("error", detail=f"HTTP {response.status_code}: {response.read()[:300]!r}")
            for line in response.iter_lines():
                outcome = read_line(line, expectation, seed, tokens, pieces)
                if outcome is not None:
                    return outcome
    except httpx.TimeoutException:
        return loadgen.Outcome("hung", len(pieces), f"no event for {timeout:.0f} s after {len(pieces)} chunks")
    except httpx.TransportError as error:
        return loadgen.Outcome("error", len(pieces), str(error))
    return loadgen.Outcome("error", len(pieces), "the stream ended without data: [DONE]")


def check(expectation: loadgen.Expectation, seed: int, tokens: int, pieces: list[str]) -> loadgen.Outcome:
    difference = loadgen.text_difference("".join(pieces), expectation.text(seed, tokens))
    return loadgen.Outcome("mismatch", tokens, difference) if difference else loadgen.Outcome("ok", tokens)


def drive(url: str, expectation: loadgen.Expectation, concurrency: int, tokens: int, tally: loadgen.Tally,
          keep_going: Callable[[int], bool], timeout: float = 30.0) -> float:
    """`concurrency` workers, each on its own keep-alive connection, stream while keep_going holds."""
    started, seeds, lock = itertools.count(), itertools.count(), threading.Lock()

    def work() -> None:
        with httpx.Client() as client:
            while True:
                with lock:
                    number, seed = next(started), next(seeds)
                if not keep_going(number):
                    return
                outcome = stream(client, url, expectation, seed, tokens, timeout)
                tally.add(outcome)
                if outcome.kind == "hung":
                    return

    return loadgen.run_workers(concurrency, work)
