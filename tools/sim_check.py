"""Check the simulator's single-replica model against the real CPU Triton: the same arrivals replayed
against tools/serve.py's tritonserver and simulated with a step model calibrated on the same machine.

It starts tritonserver on a built CPU repository, measures its step times (decode steps at several
batch sizes and context lengths, lone prefills at several prompt lengths) and fits the step model
(simulator/calibrate.py), or reads one with --step-model; measures the capacity (a burst of requests,
completed per second); then replays one seeded Poisson arrival sequence (or a trace's arrivals) at three
loads, every request streamed from the tensorrt_llm model with exactly --input-tokens in and
--output-tokens out (min_tokens holds the end id back), and simulates the same sends on one replica.
Prints measured beside simulated: p50 and p90 time to first token and end-to-end, with their ratio and
whether each is within 20% (issue 21). Exit status 1 if any is not. --refit fits a step-model file's
recorded samples again and rewrites it, with no server.

Examples:
  python tools/sim_check.py                                   # out/cpu, calibrate, loads 20/60/90% of capacity
  python tools/sim_check.py --write-step-model simulator/cpu_step_model.toml --json
  python tools/sim_check.py --step-model simulator/cpu_step_model.toml --requests 20 --loads 0.3,0.9
  python tools/sim_check.py --trace conv --input-tokens 64 --output-tokens 16
  python tools/sim_check.py --refit simulator/cpu_step_model.toml   # no server: refit its samples
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import math
import os
import platform
import socket
import sys
import threading
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "build"), str(ROOT / "tools")]

import serve  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from simulator import calibrate, trace, validation  # noqa: E402
from simulator.replica import Limits, StepModel  # noqa: E402
from simulator.run import StaticFleet, replay  # noqa: E402

MODEL = "tensorrt_llm"
LOADS = (0.2, 0.6, 0.9)  # light, ~60% and ~90% of the measured capacity (issue 21)
# Calibration grid: batch sizes (capped at max_batch_size) and prompt lengths for decode steps; prompt
# lengths for lone prefills (capped at max_input_len), each measured twice.
DECODE_BATCHES = (1, 2, 4, 8)
DECODE_PROMPTS = (32, 256)
DECODE_STEADY_STEPS = 16  # decode steps measured after the last row of a run joined
PREFILL_PROMPTS = (8, 32, 64, 128, 256, 512)
PREFILL_REPEATS = 3
# the capacity burst, in batches' worth sent at once: long enough that its ramp and tail are a small part
CAPACITY_BATCHES = 6
STREAM_TIMEOUT_S = 300.0
# The CPU runtime's Decoder.step (model_repository/tensorrt_llm/cpu/1/generation.py) merges a group whose
# prompt's last chunk went in into the running batch before that batch's forward, and delivers what the
# whole step emitted at its end: a joining row's first two tokens come from its joining step, together.
# The calibration says how far apart it measured them (decode_samples skips that pair for the same reason).
JOINING_ROW_DECODES = True
# Token times this close come from one step: the runtime sends a step's responses one after another, so
# they reach the client up to a few milliseconds apart under load (a 0.1 ms tolerance could count a row
# whose last token came from the reference's step as gone before it), while a step takes 50 ms or more.
SAME_STEP_S = 0.005


class CheckError(RuntimeError):
    """The check could not run; the message says what failed."""


@dataclass(frozen=True)
class Engine:
    """What the served CPU repository's tensorrt_llm was built with."""

    max_batch_size: int
    max_input_len: int
    max_output_len: int
    chunk_tokens: int  # prompt tokens fed per step (the runtime's PREFILL_CHUNK_TOKENS)
    end_id: int
    vocab_size: int

    @classmethod
    def of(cls, repository: Path) -> Engine:
        model_dir = repository / MODEL
        if not (model_dir / "1" / "generation.py").is_file():
            raise CheckError(f"{repository} has no CPU tensorrt_llm (needs {MODEL}/1/generation.py); "
                             "build one with `python build/compile.py --gpu cpu`")
        config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        params = {key: value.string_value for key, value in config.parameters.items()}
        checkpoint = json.loads((model_dir / "1" / params["checkpoint_dir"] / "config.json").read_text())
        eos = checkpoint.get("eos_token_id", 0)
        return cls(config.max_batch_size, int(params["max_input_len"]), int(params["max_output_len"]),
                   chunk_tokens(model_dir / "1" / "model.py"), int(eos[0] if isinstance(eos, list) else eos),
                   int(checkpoint["vocab_size"]))

    def limits(self) -> Limits:
        # The runtime prefills one chunk of chunk_tokens per step beside every decoding row, and has no KV
        # budget (its cache grows): so a step's tokens may reach chunk + batch, and KV never refuses.
        max_seq_len = self.max_input_len + self.max_output_len
        return Limits(max_batch_size=self.max_batch_size, max_num_tokens=self.chunk_tokens + self.max_batch_size,
                      kv_tokens=self.max_batch_size * max_seq_len, max_input_len=self.max_input_len,
                      max_seq_len=max_seq_len)


def chunk_tokens(model_py: Path) -> int:
    """PREFILL_CHUNK_TOKENS as the served runtime defines it (read, not imported: it needs Triton's stub)."""
    for node in ast.parse(model_py.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PREFILL_CHUNK_TOKENS" for t in node.targets):
            return int(ast.literal_eval(node.value))
    raise CheckError(f"{model_py} defines no PREFILL_CHUNK_TOKENS")


class Streams:
    """One gRPC stream to tensorrt_llm carrying every request; each response timestamped as it arrives."""

    def __init__(self, url: str, engine: Engine):
        self.engine = engine
        self.client = grpcclient.InferenceServerClient(url)
        self.sent: dict[str, float] = {}
        self.tokens: dict[str, list[float]] = defaultdict(list)
        self.finished: dict[str, float] = {}
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.ids = 0
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:
        now = time.perf_counter()
        with self.changed:
            if error is not None:
                self.errors.append(str(error))
            else:
                response = result.get_response()
                out = result.as_numpy("output_ids")
                if out is not None and out.size:
                    self.tokens[response.id].append(now)
                if response.parameters["triton_final_response"].bool_param:
                    self.finished[response.id] = now
            self.changed.notify_all()

    def send(self, prompt: np.ndarray, output_tokens: int) -> str:
        self.ids += 1
        request_id = str(self.ids)

        def tensor(name: str, value: np.ndarray, datatype: str) -> grpcclient.InferInput:
            item = grpcclient.InferInput(name, list(value.shape), datatype)
            item.set_data_from_numpy(value)
            return item

        one = np.array([[output_tokens]], dtype=np.int32)
        inputs = [tensor("input_ids", prompt.astype(np.int32)[None, :], "INT32"),
                  tensor("input_lengths", np.array([[len(prompt)]], dtype=np.int32), "INT32"),
                  tensor("request_output_len", one, "INT32"), tensor("min_tokens", one, "INT32"),
                  tensor("end_id", np.array([[self.engine.end_id]], dtype=np.int32), "INT32"),
                  tensor("streaming", np.array([[True]]), "BOOL")]
        self.sent[request_id] = time.perf_counter()
        self.client.async_stream_infer(MODEL, inputs, request_id=request_id,
                                       outputs=[grpcclient.InferRequestedOutput("output_ids")],
                                       enable_empty_final_response=True)
        return request_id

    def wait(self, request_ids: list[str], timeout: float = STREAM_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            # in short waits, so that Ctrl-C is seen (and the server stopped) while streams are running
            while not self.changed.wait_for(lambda: self.errors or all(r in self.finished for r in request_ids), 0.5):
                if time.monotonic() > deadline:
                    raise CheckError(f"requests not finished after {timeout:.0f} s")
            if self.errors:
                raise CheckError(f"tensorrt_llm answered with an error: {self.errors[0]}")

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def prompt(rng: np.random.Generator, engine: Engine, tokens: int) -> np.ndarray:
    return rng.integers(10, engine.vocab_size, tokens)


def decode_samples(times: list[np.ndarray], prompt_tokens: int) -> list[calibrate.DecodeSample]:
    """Steps after every row of a run (requests sent together, each row's token arrival times) has joined:
    the gaps between the last-joined row's tokens (from its second: its first two come from one step, the
    prompt's last chunk and the batch's decode), with the rows still running and their context lengths."""
    reference = max(range(len(times)), key=lambda i: times[i][0])
    ref = times[reference]
    samples = []
    for k in range(1, len(ref) - 1):
        start, end = ref[k], ref[k + 1]
        active = [t for t in times if t[-1] >= end - SAME_STEP_S]
        kv = sum(prompt_tokens + int(np.searchsorted(t, start + SAME_STEP_S)) for t in active)
        samples.append(calibrate.DecodeSample(len(active), float(kv), float(end - start)))
    return samples


def mixed_samples(times: list[np.ndarray], prompt_tokens: int, chunk: int) -> list[calibrate.MixedSample]:
    """Steps while the rows of a run (sent together, prompts of whole chunks) are still joining one by one:
    the gaps between the first-joined row's tokens, each step carrying one prompt chunk beside the rows
    decoding (a row that joins with the step decodes in it too)."""
    if prompt_tokens < 2 * chunk or prompt_tokens % chunk:
        return []
    firsts = sorted(t[0] for t in times)
    first = min(times, key=lambda t: t[0])
    samples = []
    for k in range(1, len(first) - 1):
        start, end = first[k], first[k + 1]
        if end >= firsts[-1] - SAME_STEP_S:  # the last row's joining step, and the steady steps after it
            break
        rows = [t for t in times if t[0] <= end + SAME_STEP_S and t[-1] >= end - SAME_STEP_S]
        kv = sum(prompt_tokens + int(np.searchsorted(t, start + SAME_STEP_S)) for t in rows)
        samples.append(calibrate.MixedSample(len(rows), float(kv), chunk, float(end - start)))
    return samples


def measure_steps(streams: Streams, engine: Engine, rng: np.random.Generator, say) -> tuple[list, list, list]:
    decode, mixed, joins = [], [], []
    for prompt_tokens in sorted({min(p, engine.max_input_len) for p in DECODE_PROMPTS}):
        for batch in sorted({min(b, engine.max_batch_size) for b in DECODE_BATCHES}):
            # enough tokens that the first row is still running when the last has joined, then steady steps
            chunks = math.ceil(prompt_tokens / engine.chunk_tokens)
            output = min(engine.max_output_len, DECODE_STEADY_STEPS + 2 + batch * chunks)
            ids = [streams.send(prompt(rng, engine, prompt_tokens), output) for _ in range(batch)]
            streams.wait(ids)
            times = [np.array(streams.tokens[r]) for r in ids]
            run = calibrate.medians(decode_samples(times, prompt_tokens))
            decode += run
            joins += [float(t[1] - t[0]) for t in times if len(t) > 1]
            mixed += mixed_samples(times, prompt_tokens, engine.chunk_tokens)
            say(f"  decode: {batch} x {prompt_tokens}-token prompts: median step "
                + ", ".join(f"{s.seconds * 1e3:.1f} ms at {s.sequences} rows" for s in reversed(run)))
    say(f"  joining steps: a row's first two tokens {np.median(joins) * 1e3:.1f} ms apart (median of {len(joins)}; "
        f"a decode step {min(s.seconds for s in decode) * 1e3:.0f} ms or more)")
    prefill = []
    for prompt_tokens in sorted({min(p, engine.max_input_len) for p in PREFILL_PROMPTS}):
        for _ in range(PREFILL_REPEATS):
            request = streams.send(prompt(rng, engine, prompt_tokens), 1)
            streams.wait([request])
            ttft = streams.tokens[request][0] - streams.sent[request]
            prefill.append(calibrate.PrefillSample(prompt_tokens, math.ceil(prompt_tokens / engine.chunk_tokens),
                                                   ttft))
        say(f"  prefill: {prompt_tokens}-token prompt: first token in {ttft * 1e3:.0f} ms")
    return decode, prefill, mixed


def measure_capacity(streams: Streams, engine: Engine, rng: np.random.Generator, inputs: int, outputs: int) -> float:
    """Requests completed per second by a burst of CAPACITY_BATCHES batches' worth sent at once."""
    began = time.perf_counter()
    ids = [streams.send(prompt(rng, engine, inputs), outputs) for _ in range(CAPACITY_BATCHES * engine.max_batch_size)]
    streams.wait(ids)
    return len(ids) / (max(streams.finished[r] for r in ids) - began)


def replay_real(streams: Streams, engine: Engine, arrivals: np.ndarray, prompts: list[np.ndarray],
                outputs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Send each prompt at its arrival (seconds from now); (send offsets, TTFT, e2e) per request, as sent."""
    t0 = time.perf_counter()
    ids = []
    for at, ids_in in zip(arrivals, prompts, strict=True):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids.append(streams.send(ids_in, outputs))
    streams.wait(ids)
    for r in ids:
        if len(streams.tokens[r]) != outputs:
            raise CheckError(f"request {r} streamed {len(streams.tokens[r])} tokens, not {outputs}")
    sent = np.array([streams.sent[r] for r in ids])
    first = np.array([streams.tokens[r][0] for r in ids])
    last = np.array([streams.tokens[r][-1] for r in ids])
    return sent - t0, first - sent, last - sent


def simulate(engine: Engine, model: StepModel, offsets: np.ndarray, inputs: int, outputs: int):
    n = len(offsets)
    sequence = trace.Trace("sim_check", offsets - offsets[0], np.full(n, inputs, dtype=np.int64),
                           np.full(n, outputs, dtype=np.int64))
    run = replay(sequence, limits=engine.limits(), model=model, balancer="round_robin",
                 fleet=StaticFleet(replicas=1, gpus_per_node=0, usd_per_node_hour=None))
    return run.ttft_s, run.e2e_s


def arrival_sequence(source: str | None, requests: int, seed: int) -> np.ndarray:
    """Arrival times at a mean rate of 1 request/s (each load divides them by its rate): seeded Poisson,
    or the first `requests` of a trace's arrivals (trace.load: conv, code or a CSV) at that mean rate."""
    if source is None:
        return np.cumsum(np.random.default_rng(seed).exponential(1.0, requests))
    arrivals = trace.scale(trace.load(source), rate=1.0).arrival_s[:requests]
    if len(arrivals) < requests:
        raise CheckError(f"trace {source} has {len(arrivals)} requests, fewer than --requests {requests}")
    return arrivals


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), no GPU, {platform.system()} {platform.release()}; load average {load}"


def describe(result: calibrate.Fit) -> str:
    def ms(errors: dict[str, float]) -> str:
        return ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in errors.items())

    return (f"fitted: {asdict(result.model)}; fit errors (rms): decode {result.decode_rms_s * 1e3:.1f} ms "
            f"(each form left one out: {ms(result.decode_forms_rms_s)}), prefill {result.prefill_rms_s * 1e3:.1f} ms, "
            f"mixed steps {ms(result.mixed_rms_s)}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "out" / "cpu",
                        help="built CPU model repository (default: out/cpu)")
    parser.add_argument("--step-model", type=Path, help="read this step-model file instead of calibrating")
    parser.add_argument("--write-step-model", type=Path, help="write the calibrated step model here (TOML)")
    parser.add_argument("--refit", type=Path, metavar="FILE",
                        help="fit this step-model file's recorded samples again, rewrite it and stop (no server)")
    parser.add_argument("--input-tokens", type=int, default=128, help="every request's prompt (default 128)")
    parser.add_argument("--output-tokens", type=int, default=32, help="every request's answer (default 32)")
    parser.add_argument("--requests", type=int, default=30, help="requests per load (default 30)")
    parser.add_argument("--loads", default=",".join(f"{x:g}" for x in LOADS),
                        help="fractions of the measured capacity (default 0.2,0.6,0.9)")
    parser.add_argument("--trace", help="take arrivals from this trace (conv, code or a CSV) instead of Poisson")
    parser.add_argument("--seed", type=int, default=0, help="seeds the arrivals and the prompts' token ids")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        args.loads = [float(x) for x in args.loads.split(",")]
    except ValueError:
        parser.error(f"--loads {args.loads!r} must be comma-separated fractions such as 0.2,0.6,0.9")
    if not all(0 < x for x in args.loads):
        parser.error("--loads must be above 0")
    for name in ("input_tokens", "output_tokens", "requests"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    command = " ".join(["python tools/sim_check.py", *(argv if argv is not None else sys.argv[1:])])
    if args.refit:
        try:
            say(describe(calibrate.refit(args.refit, joining_row_decodes=JOINING_ROW_DECODES, command=command)))
        except (ValueError, OSError) as error:  # tomllib's errors are ValueErrors
            print(f"error: {error}", file=sys.stderr)
            return 2
        print(args.refit)
        return 0
    try:
        engine = Engine.of(args.repository)
        if args.input_tokens > engine.max_input_len or args.output_tokens > engine.max_output_len:
            raise CheckError(f"--input-tokens and --output-tokens must be within the build's max_input_len "
                             f"{engine.max_input_len} and max_output_len {engine.max_output_len}")
        model = StepModel.from_file(args.step_model) if args.step_model else None
        arrivals = arrival_sequence(args.trace, args.requests, args.seed)
    except (CheckError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    prompts = [prompt(rng, engine, args.input_tokens) for _ in range(args.requests)]
    host_before = machine()
    ports = serve.Ports(*(free_port() for _ in range(3)))
    log = args.repository.parent / "sim_check-tritonserver.log"
    rows: list[validation.Row] = []
    try:
        with serve.running(args.repository, ports, log_file=log):
            streams = Streams(f"127.0.0.1:{ports.grpc}", engine)
            try:
                streams.wait([streams.send(prompts[0], 2)])  # warm: the first forward pays one-off costs
                if model is None:
                    say("calibrating step times ...")
                    decode, prefill, mixed = measure_steps(streams, engine, rng, say)
                    result = calibrate.fit(decode, prefill, f"tools/sim_check.py on {platform.node()}", mixed,
                                           JOINING_ROW_DECODES)
                    model = result.model
                    say(describe(result))
                    if args.write_step_model:
                        calibrate.write(args.write_step_model, result, machine=host_before, command=command,
                                        measured_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                                        decode=decode, prefill=prefill, mixed=mixed)
                capacity = measure_capacity(streams, engine, rng, args.input_tokens, args.output_tokens)
                say(f"capacity: {capacity:.3f} requests/s ({args.input_tokens} in, {args.output_tokens} out)")
                for load in args.loads:
                    rate = load * capacity
                    say(f"replaying {args.requests} requests at {rate:.3f}/s ({load:.0%}) ...")
                    offsets, ttft, e2e = replay_real(streams, engine, arrivals / rate, prompts, args.output_tokens)
                    sim_ttft, sim_e2e = simulate(engine, model, offsets, args.input_tokens, args.output_tokens)
                    rows += validation.rows(f"{load:.0%}", rate, {"TTFT": ttft, "e2e": e2e},
                                            {"TTFT": sim_ttft, "e2e": sim_e2e})
            finally:
                streams.close()
    except (serve.ServeError, CheckError) as error:
        print(f"error: {error} (tritonserver's log: {log})", file=sys.stderr)
        return 1
    host_after = machine()
    if args.json:
        print(json.dumps({"machine_before": host_before, "machine_after": host_after, "command": command,
                          "capacity_per_s": capacity, "step_model": asdict(model),
                          "rows": [row.as_dict() for row in rows]}, indent=2))
    else:
        print(f"machine: {host_before}\n  after: {host_after}\ncommand: {command}\n"
              f"step model: {model.source}\ncapacity: {capacity:.3f} requests/s\n")
        print(validation.table(rows))
    return 0 if all(row.within() for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
