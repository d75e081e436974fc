"""Streams against the stand-in engine, each checked in full, and the server's processes watched.

Shared by tools/bench.py --ceiling, tools/soak.py and tests/test_fast_engine.py. Every stream is
checked against what the stand-in must produce (tools/harness/standin.py): through the ensemble the pieces
must add up to the decode of the emitted ids; straight to tensorrt_llm the ids must be those ids.
A stream with no response for `timeout` seconds is hung: the client gives up on it (cancels) and
carries on on a fresh connection, so one wedged server never wedges the caller.
"""

from __future__ import annotations

import itertools
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from harness import standin

PROMPT = "Tell me a short story about a lighthouse keeper."
CLOCK_TICKS = 100  # os.sysconf("SC_CLK_TCK") is 100 on every Linux we run on; /proc/<pid>/stat counts in ticks
# tritonserver log lines that mean a python stub (a model instance) died or was restarted.
STUB_TROUBLE = re.compile(r"stub.*(unhealthy|restart|exit|died|crash)|Non-graceful termination|Segmentation|SIGSEGV|"
                          r"core dumped|Failed to .*stub|malloc\(\)|free\(\)|double free|corrupted|"
                          r"terminate called|Signal \(\d+\) received", re.IGNORECASE)


@dataclass(frozen=True)
class Expectation:
    """What a stand-in repository emits; computed once per repository."""

    cycle: list[int]
    tokenizer: Tokenizer
    prompt_ids: list[int]

    @classmethod
    def of(cls, repository: Path) -> Expectation:
        tokenizer = standin.tokenizer_of(repository)
        return cls(standin.cycle_of(repository), tokenizer, tokenizer.encode(PROMPT, add_special_tokens=False).ids)

    def ids(self, seed: int, tokens: int) -> list[int]:
        return standin.expected_ids(self.cycle, seed, tokens)

    def text(self, seed: int, tokens: int) -> str:
        return standin.expected_text(self.tokenizer, self.ids(seed, tokens))


@dataclass
class Outcome:
    """One stream: 'ok', or the kind of failure (error, hung, mismatch, crosstalk) and what was seen."""

    kind: str
    tokens: int = 0
    detail: str = ""


def tensor(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
    item = grpcclient.InferInput(name, list(value.shape), datatype)
    item.set_data_from_numpy(value)
    return item


def text_difference(got: str, want: str) -> str | None:
    """Where a streamed text first differs from the expected one; None where they are equal."""
    if got == want:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return f"text differs at char {at}: got {got[at:at + 20]!r}, want {want[at:at + 20]!r}"


class Streamer:
    """One gRPC stream to one model; one request on it at a time (a worker of the load)."""

    def __init__(self, url: str, model: str, expectation: Expectation, timeout: float):
        self.url, self.model, self.expect, self.timeout = url, model, expectation, timeout
        self.ids = itertools.count()
        self.client: grpcclient.InferenceServerClient | None = None
        self.responses: queue.Queue = queue.Queue()

    def connect(self) -> None:
        self.client = grpcclient.InferenceServerClient(self.url)
        self.responses = queue.Queue()  # a fresh queue: late responses of an abandoned stream go to the old one
        responses = self.responses
        self.client.start_stream(callback=lambda result, error: responses.put((result, error)))

    def close(self) -> None:
        """Cancel what is in flight; in a thread, since a wedged server can make even that wait."""
        client, self.client = self.client, None
        if client is None:
            return

        def shut() -> None:
            try:
                client.stop_stream(cancel_requests=True)
                client.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail any way it likes
                pass

        closer = threading.Thread(target=shut, daemon=True)
        closer.start()
        closer.join(5)

    def inputs(self, seed: int, tokens: int) -> tuple[list[grpcclient.InferInput], list[str]]:
        if self.model == "ensemble":
            return [tensor("text_input", np.array([[PROMPT.encode()]], dtype=object), "BYTES"),
                    tensor("max_tokens", np.array([[tokens]], dtype=np.int32), "INT32"),
                    tensor("stream", np.array([[True]]), "BOOL"),
                    tensor("seed", np.array([[seed]], dtype=np.uint64), "UINT64")], ["text_output"]
        ids = self.expect.prompt_ids
        return [tensor("input_ids", np.array([ids], dtype=np.int32), "INT32"),
                tensor("input_lengths", np.array([[len(ids)]], dtype=np.int32), "INT32"),
                tensor("request_output_len", np.array([[tokens]], dtype=np.int32), "INT32"),
                tensor("end_id", np.array([[0]], dtype=np.int32), "INT32"),
                tensor("streaming", np.array([[True]]), "BOOL"),
                tensor("seed", np.array([[seed]], dtype=np.uint64), "UINT64")], ["output_ids", "sequence_length"]

    def stream(self, seed: int, tokens: int) -> Outcome:
        if self.client is None:
            try:
                self.connect()
            except Exception as error:  # noqa: BLE001 - a dead server refuses in many ways
                return Outcome("error", detail=f"connect: {error}")
        request_id = str(next(self.ids))
        inputs, outputs = self.inputs(seed, tokens)
        try:
            self.client.async_stream_infer(self.model, inputs, request_id=request_id,
                                           outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                                           enable_empty_final_response=True)
        except InferenceServerException as error:  # the stream broke after the last request (server gone)
            self.close()
            return Outcome("error", detail=f"send: {error.message()}")
        pieces: list[str] = []
        ids: list[int] = []
        while True:
            try:
                result, error = self.responses.get(timeout=self.timeout)
            except queue.Empty:
                self.close()
                return Outcome("hung", len(ids) or len(pieces),
                               f"no response for {self.timeout:.0f} s after {len(pieces) or len(ids)} responses")
            if error is not None:
                self.close()  # the stream may be broken; start the next request on a fresh one
                message = error.message() if isinstance(error, InferenceServerException) else str(error)
                return Outcome("error", len(ids) or len(pieces), message)
            response = result.get_response()
            if response.id != request_id:
                self.close()
                return Outcome("crosstalk", detail=f"response for request {response.id!r} on {request_id!r}")
            if self.model == "ensemble":
                text = result.as_numpy("text_output")
                if text is not None and text.size:
                    pieces.append(text.reshape(-1)[0].decode("utf-8"))
            else:
                out = result.as_numpy("output_ids")
                if out is not None and out.size:
                    length = int(result.as_numpy("sequence_length").reshape(-1)[0])
                    ids += out.reshape(-1)[:length].tolist()
            if response.parameters["triton_final_response"].bool_param:
                return self.check(seed, tokens, pieces, ids)

    def check(self, seed: int, tokens: int, pieces: list[str], ids: list[int]) -> Outcome:
        if self.model == "ensemble":
            difference = text_difference("".join(pieces), self.expect.text(seed, tokens))
            if difference:
                return Outcome("mismatch", tokens, f"{difference} ({len(pieces)} pieces)")
            return Outcome("ok", tokens)
        if ids != self.expect.ids(seed, tokens):
            return Outcome("mismatch", len(ids), f"ids differ: got {len(ids)} ids, want {tokens}")
        return Outcome("ok", tokens)


@dataclass
class Tally:
    """Outcomes of many streams, from many threads."""

    outcomes: Counter = field(default_factory=Counter)
    tokens: int = 0  # of streams that were right
    received: int = 0  # of every stream, also failed ones: what the server did work for
    examples: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes[outcome.kind] += 1
            self.tokens += outcome.tokens if outcome.kind == "ok" else 0
            self.received += outcome.tokens
            if outcome.kind != "ok":
                self.examples.setdefault(outcome.kind, outcome.detail)

    @property
    def streams(self) -> int:
        return sum(self.outcomes.values())

    @property
    def failures(self) -> int:
        return self.streams - self.outcomes["ok"]

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.outcomes.items()) if kind != "ok")
        return f"{self.streams} streams, {self.tokens} tokens, failures: {kinds or 'none'}"


def drive(url: str, model: str, expectation: Expectation, concurrency: int, tokens: int, tally: Tally,
          keep_going: Callable[[int], bool], timeout: float = 30.0, seeds: itertools.count | None = None) -> float:
    """`concurrency` workers stream while keep_going(streams started so far) holds; returns wall seconds.

    A hung stream makes its worker stop (the server is likely wedged; more streams would only wait
    `timeout` again); the others go on.
    """
    seeds = seeds or itertools.count()
    started = itertools.count()
    lock = threading.Lock()

    def work() -> None:
        streamer = Streamer(url, model, expectation, timeout)
        try:
            while True:
                with lock:
                    number = next(started)
                    seed = next(seeds)
                if not keep_going(number):
                    return
                outcome = streamer.stream(seed, tokens)
                tally.add(outcome)
                if outcome.kind == "hung":
                    return
        finally:
            streamer.close()

    return run_workers(concurrency, work)


def run_workers(concurrency: int, work: Callable[[], None]) -> float:
    """`concurrency` threads of work, started together; the wall seconds until the last returns."""
    began = time.monotonic()
    workers = [threading.Thread(target=work, daemon=True) for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return time.monotonic() - began


def count(streams: int) -> Callable[[int], bool]:
    return lambda started: started < streams


def until(deadline: float) -> Callable[[int], bool]:
    return lambda _started: time.monotonic() < deadline


# --- the server's processes -------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def label(pid: int) -> str | None:
    """A python backend stub's model instance (e.g. ensemble_0_0) from its command line; None otherwise.

    The stub is started as: triton_python_backend_stub <repo>/<model>/<version>/model.py <shm> ...
    <instance name> ...; the instance name starts with the model's name.
    """
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if not args or not args[0].endswith("triton_python_backend_stub") or len(args) < 2:
        return None
    model = Path(args[1]).parent.parent.name
    return next((a for a in args[2:] if re.fullmatch(rf"{re.escape(model)}_\d+(_\d+)?", a)), f"{model}_{pid}")


def stubs(server_pid: int) -> dict[str, int]:
    """Model instance -> stub pid, for every python backend stub of this tritonserver."""
    found = {}
    for pid in children(server_pid):
        name = label(pid)
        if name:
            found[name] = pid
    return found


def tree_rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (tritonserver and its stubs; a gateway and its workers)."""
    total = 0
    for each in [pid, *children(pid)]:
        try:
            status = Path(f"/proc/{each}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat


def cpu_snapshot(server_pid: int) -> dict[str, tuple[int, float]]:
    """(pid, CPU seconds so far) of tritonserver and of each stub, by model instance."""
    pids = {"tritonserver": server_pid, **stubs(server_pid)}
    return {name: (pid, seconds) for name, pid in pids.items() if (seconds := cpu_seconds(pid)) is not None}


def cpu_used(before: dict[str, tuple[int, float]], after: dict[str, tuple[int, float]]) -> dict[str, float]:
    """CPU seconds spent between two snapshots; a process that was restarted (new pid) counts from zero."""
    used = {}
    for name, (pid, seconds) in after.items():
        old = before.get(name)
        used[name] = seconds - old[1] if old and old[0] == pid else seconds
    return used


def stub_changes(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """Stubs that died (gone) or were restarted (new pid) between two looks at stubs()."""
    changes = []
    for name, pid in sorted(before.items()):
        if name not in after:
            changes.append(f"{name} stub (pid {pid}) is gone")
        elif after[name] != pid:
            changes.append(f"{name} stub pid {pid} was replaced by pid {after[name]} (died, restarted)")
    return changes


class LogWatch:
    """New lines of tritonserver's log that tell of stub trouble."""

    def __init__(self, log: Path):
        self.log = log
        self.offset = log.stat().st_size if log.exists() else 0

    def trouble(self) -> list[str]:
        if not self.log.exists():
            return []
        with self.log.open("rb") as handle:
            handle.seek(self.offset)
            new = handle.read()
        self.offset += len(new)
        return [line for line in new.decode(errors="replace").splitlines() if STUB_TROUBLE.search(line)]
