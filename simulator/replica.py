"""One serving replica as TensorRT-LLM's executor batches in flight, iteration by iteration.

Each iteration (step) the scheduler admits waiting requests first come, first served while a batch slot
is free (max_batch_size) and the KV budget holds the request's whole length, rounded up to KV blocks
(the guaranteed_no_evict policy build/runtimes/engine.py configures: a started request always finishes);
the first request that does not fit waits, and so does everything behind it. The step then carries one
token of every decoding request plus context (prefill) chunks of the admitted requests, first admitted
first, up to max_num_tokens in all. A request's last context chunk yields its first token (and, where the
step model says the runtime decodes a joining row in its joining step, as the CPU runtime does, its second);
every later step one more. Times come from a StepModel: the plan's estimate (build/estimate.py) unless
calibrated; a calibrated one may add each request's latency outside steps to its first token and its end.

For speed, a run of decode-only steps between events is taken at once (no per-token Python work): the
step time of such a run is evaluated at its middle KV length, and a run is at most MAX_RUN steps, so
the KV length an estimate reads is never more than MAX_RUN / 2 tokens per sequence off.
"""

from __future__ import annotations

import heapq
import json
import math
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import catalog
import estimate
from catalog import GIB
from memory import TOKENS_PER_BLOCK
from plan import Plan

MAX_RUN = 64
INF = math.inf


# How a step's cost grows with the sequences it decodes (StepModel.sequence_form): n itself (the estimate's
# share per sequence), or concave in n, as a batched forward on a CPU measured (calibrate.py picks the form).
SEQUENCE_FORMS = {"linear": float, "sqrt": math.sqrt, "log": lambda n: math.log(n) if n else 0.0}


@dataclass(frozen=True)
class StepModel:
    """One step: overhead_s + max(weights_s + kv_token_s x KV tokens read + sequence_s x g(sequences)
    + multi_row_s if more than one sequence, token_s x tokens computed), g the sequence_form (n itself by
    default). from_plan gives build/estimate.py's decode step and prefill exactly (the later fields at their
    defaults); a calibration measures these coefficients on a real server and loads them with from_file.
    separate_prefill: the runtime feeds prompt chunks in a forward of their own before the batch's decode
    forward (the CPU runtime's Decoder.step), so a step with prompt tokens costs both, added; the prompt
    forward's fixed cost beside a decode forward is prompt_forward_s (None: a whole step's overhead_s; a
    calibration measures it, as the runtime's per-step work outside the forwards is paid once).
    joining_row_decodes: a request whose prompt's last chunk goes in decodes in the same step, so it gets
    two tokens from its joining step (the CPU runtime merges it into the running batch before that batch's
    forward); TensorRT-LLM's executor gives it one. request_latency_s: each request's time outside steps
    (the client's round trip, the server's queue and hand-over), added to its first token and its end."""

    overhead_s: float  # fixed per step (the all-reduces' latency with TP > 1)
    weights_s: float  # reading this GPU's weights once
    kv_token_s: float  # reading one token of KV
    sequence_s: float  # per running sequence besides its KV (its share of the all-reduces), times g(n)
    token_s: float  # the matmuls of one token (prefill and decode alike)
    source: str = "build/estimate.py"
    separate_prefill: bool = False
    sequence_form: str = "linear"
    multi_row_s: float = 0.0  # added to a step of two or more sequences (a batched forward's extra cost)
    joining_row_decodes: bool = False
    request_latency_s: float = 0.0
    prompt_forward_s: float | None = None

    def __post_init__(self) -> None:
        if self.sequence_form not in SEQUENCE_FORMS:
            raise ValueError(f"sequence_form {self.sequence_form!r} is not one of {', '.join(SEQUENCE_FORMS)}")

    @classmethod
    def from_plan(cls, plan: Plan, gpu: catalog.Gpu) -> StepModel:
        if gpu.is_cpu:
            raise ValueError("the cpu target has no catalog bandwidth to estimate steps from; "
                             "give coefficients measured on the machine (a step model file, --step-model)")
        hbm = gpu.hbm_bandwidth_gb_per_s * 1e9 * estimate.BANDWIDTH_EFFICIENCY
        sequence = estimate.sequence_seconds(gpu, plan.kv_bytes_per_token, 0,
                                             estimate.allreduce_bytes(plan.num_layers, plan.hidden_size, plan.tp))
        return cls(overhead_s=estimate.allreduce_latency_s(plan.num_layers, plan.tp),
                   weights_s=plan.weights_per_gpu_gib * GIB / hbm,
                   kv_token_s=plan.kv_bytes_per_token / hbm,
                   sequence_s=sequence,
                   token_s=estimate.prefill_seconds(gpu, plan.active_parameters, plan.precision, plan.tp, 1),
                   source=f"build/estimate.py for {plan.model} on {plan.gpu} ({plan.precision}, TP {plan.tp})")

    @classmethod
    def from_file(cls, path: Path | str) -> StepModel:
        """Coefficients from a JSON or TOML file with the five fields (the calibration hook); the later
        ones are optional (a file without them is read as the engine model: linear, one token per step)."""
        path = Path(path)
        text = path.read_text()
        raw = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        names = ["overhead_s", "weights_s", "kv_token_s", "sequence_s", "token_s"]
        missing = [n for n in names if n not in raw]
        if missing:
            raise ValueError(f"{path}: step model lacks {', '.join(missing)} (needs {', '.join(names)})")
        optional = [n for n in ("multi_row_s", "request_latency_s", "prompt_forward_s") if n in raw]
        bad = [n for n in names + optional if not isinstance(raw[n], int | float) or raw[n] < 0]
        if bad:
            raise ValueError(f"{path}: {', '.join(bad)} must be numbers of seconds, at least 0")
        flags = [n for n in ("separate_prefill", "joining_row_decodes") if n in raw]
        for name in flags:
            if not isinstance(raw[name], bool):
                raise ValueError(f"{path}: {name} must be true or false")
        form = raw.get("sequence_form", "linear")
        if form not in SEQUENCE_FORMS:
            raise ValueError(f"{path}: sequence_form {form!r} must be one of {', '.join(SEQUENCE_FORMS)}")
        return cls(**{n: float(raw[n]) for n in names + optional}, **{n: raw[n] for n in flags},
                   source=str(raw.get("source", path)), sequence_form=form)

    def step(self, sequences: int, kv_tokens: float, tokens: int, prompt_tokens: int = 0) -> float:
        """A step of `sequences` (decoding, and prompts chunked), reading `kv_tokens`, computing `tokens`, of which
        `prompt_tokens` are prompt chunks."""
        if self.separate_prefill and prompt_tokens:
            decoding = tokens - prompt_tokens
            if not decoding:
                return self.overhead_s + self.token_s * prompt_tokens
            fixed = self.overhead_s if self.prompt_forward_s is None else self.prompt_forward_s
            return fixed + self.token_s * prompt_tokens + self.step(decoding, kv_tokens, decoding)
        # the estimate's form spelled out: the loop calls this for every step or run of steps
        batch = self.sequence_s * (sequences if self.sequence_form == "linear"
                                   else SEQUENCE_FORMS[self.sequence_form](sequences))
        if sequences > 1:
            batch += self.multi_row_s
        return self.overhead_s + max(self.weights_s + self.kv_token_s * kv_tokens + batch, self.token_s * tokens)


@dataclass(frozen=True)
class Limits:
    """What the engine was built and configured with (the plan's)."""

    max_batch_size: int
    max_num_tokens: int
    kv_tokens: int
    max_input_len: int
    max_seq_len: int
    tokens_per_block: int = TOKENS_PER_BLOCK

    @classmethod
    def from_plan(cls, plan: Plan) -> Limits:
        return cls(plan.max_batch_size, plan.max_num_tokens, plan.kv_tokens, plan.max_input_len, plan.max_seq_len)


class Requests:
    """Every request of a run, as plain lists (scalar access to them is what the loop does most)."""

    def __init__(self, arrival: list[float], inputs: list[int], outputs: list[int]):
        self.arrival = arrival
        self.inputs = inputs
        self.outputs = outputs
        self.first_token = [math.nan] * len(arrival)
        self.done = [math.nan] * len(arrival)
        self.replica = [-1] * len(arrival)


class Replica:
    def __init__(self, index: int, limits: Limits, model: StepModel, requests: Requests):
        self.index = index
        self.limits = limits
        self.model = model
        self.requests = requests
        self.t_free = 0.0  # when the step in progress ends (the engine is free to start the next)
        self.steps = 0  # steps completed
        self.queue: deque[int] = deque()  # arrived, not admitted
        self.prefilling: list[list[int]] = []  # [request, context tokens done], admission order
        self.decoding: list[tuple[int, int]] = []  # heap of (step its last token ends, request)
        self.kv_reserved = 0  # tokens of KV the admitted requests reserved
        self.kv_base = 0  # sum over decoding requests of (input + 1 - step it started decoding)
        self.outstanding = 0  # routed here, not finished
        self.next_change = INF  # no request finishes before this time unless another arrives
        self.step_end = 0.0  # the end of the step begun at t_free, where known (it only grows if more join)

    def executor_counts(self) -> tuple[int, int]:
        """(active, scheduled) as TensorRT-LLM's executor would count them for the next step
        (engine_facts.toml [executor]): a queued request with a free batch slot is active; the decoding
        requests, and those that KV (first come, first served) and the token budget give a chunk, are
        scheduled. Read, not changed: the step itself admits as _admit and _prefill_step do."""
        limits, inputs = self.limits, self.requests.inputs
        running = len(self.prefilling) + len(self.decoding)
        slotted = min(len(self.queue), max(0, limits.max_batch_size - running))
        room = max(1, limits.max_num_tokens - len(self.decoding))
        scheduled = len(self.decoding)
        for request, done in self.prefilling:
            if room <= 0:
                break
            room -= inputs[request] - done
            scheduled += 1
        kv = self.kv_reserved
        for position in range(slotted):
            request = self.queue[position]
            kv += self._reserve(request)
            if room <= 0 or kv > limits.kv_tokens:
                break
            room -= inputs[request]
            scheduled += 1
        return running + slotted, scheduled

    def _reserve(self, request: int) -> int:
        block = self.limits.tokens_per_block
        return -(-(self.requests.inputs[request] + self.requests.outputs[request]) // block) * block

    def add(self, request: int) -> None:
        """A request routed here as it arrives; requests must come in arrival order. The engine need not
        have been advanced to its arrival: no step that starts before it admits it."""
        self.queue.append(request)
        self.outstanding += 1
        self.requests.replica[request] = self.index
        # it finishes one step after its arrival at the earliest; the others no sooner than before
        model = self.model
        least = min(model.weights_s, model.token_s) if model.separate_prefill else model.weights_s
        shortest = model.overhead_s + least
        self.next_change = min(self.next_change, max(self.t_free, self.requests.arrival[request]) + shortest)

    def _head_fits(self) -> bool:
        return (len(self.prefilling) + len(self.decoding) < self.limits.max_batch_size
                and self.kv_reserved + self._reserve(self.queue[0]) <= self.limits.kv_tokens)

    def _admit(self, start: float) -> None:
        queue, arrival = self.queue, self.requests.arrival
        limit, budget = self.limits.max_batch_size, self.limits.kv_tokens
        while queue and arrival[queue[0]] <= start and len(self.prefilling) + len(self.decoding) < limit:
            need = self._reserve(queue[0])
            if self.kv_reserved + need > budget:
                return
            self.kv_reserved += need
            self.prefilling.append([queue.popleft(), 0])

    def _finish(self, request: int, at: float) -> None:
        self.requests.done[request] = at + self.model.request_latency_s
        self.kv_reserved -= self._reserve(request)
        self.outstanding -= 1

    def _finish_decoded(self, at: float) -> None:
        """Those whose last token ended with the step just completed."""
        inputs, outputs = self.requests.inputs, self.requests.outputs
        while self.decoding and self.decoding[0][0] <= self.steps:
            last, request = heapq.heappop(self.decoding)
            # what it added (below): input + given - joined, where joined = last - outputs + given
            self.kv_base -= inputs[request] + outputs[request] - last
            self._finish(request, at)

    def advance(self, until: float) -> None:
        """Run every step that ends by `until` (all of them for INF)."""
        model, arrival = self.model, self.requests.arrival
        while True:
            if not self.prefilling and not self.decoding:
                if not self.queue or arrival[self.queue[0]] > until:
                    break
                self.t_free = max(self.t_free, arrival[self.queue[0]])  # idle until it arrives
            start = self.t_free
            self._admit(start)
            n = len(self.decoding)
            if self.prefilling:
                if not self._prefill_step(start, until, n):
                    break
                continue
            if not n:
                break
            # a run of decode-only steps: to the next finish, the next admission chance, or MAX_RUN
            run = min(self.decoding[0][0] - self.steps, MAX_RUN)
            step = model.step(n, self.kv_base + n * (self.steps + run / 2), n)
            if self.queue and arrival[self.queue[0]] > start:
                run = min(run, max(1, math.ceil((arrival[self.queue[0]] - start) / step)))
            if until != INF:
                run = min(run, int((until - start) / step))
                if run <= 0:
                    break
            self.steps += run
            self.t_free = start + run * step
            self._finish_decoded(self.t_free)
        self._update_next_change()

    def _prefill_step(self, start: float, until: float, n: int) -> bool:
        """One step with context chunks; False (nothing done) if it would end after `until`."""
        inputs, outputs = self.requests.inputs, self.requests.outputs
        room = max(1, self.limits.max_num_tokens - n)
        chunks = []
        kv = self.kv_base + n * self.steps
        for entry in self.prefilling:
            if room <= 0:
                break
            request, done = entry
            take = min(inputs[request] - done, room)
            room -= take
            kv += done + take
            chunks.append((entry, take))
        tokens = sum(take for _, take in chunks)
        # with joining_row_decodes a prompt that completes here decodes in this step's forward too (but a
        # one-token answer is done with its first token and leaves before that forward)
        joining = sum(1 for entry, take in chunks if entry[1] + take == inputs[entry[0]] and outputs[entry[0]] > 1
                      ) if self.model.joining_row_decodes else 0
        end = start + self.model.step(n + len(chunks), kv, n + joining + tokens, tokens)
        if end > until:
            # the step from t_free has begun by `until`: no later arrival joins it, none finishes before it ends
            self.step_end = end
            return False
        self.steps += 1
        self.t_free = end
        self._finish_decoded(end)
        for entry, take in chunks:
            entry[1] += take
            request = entry[0]
            if entry[1] < inputs[request]:
                continue
            self.requests.first_token[request] = end + self.model.request_latency_s
            # tokens this step gave it: its first, and with joining_row_decodes its second
            given = min(outputs[request], 2 if self.model.joining_row_decodes else 1)
            if outputs[request] == given:
                self._finish(request, end)
            else:
                # it decodes from the next step on; its last token ends step steps + outputs - given, and its
                # KV at step s is input + given + (s - 1 - steps), kv_base's term input + given - steps
                heapq.heappush(self.decoding, (self.steps + outputs[request] - given, request))
                self.kv_base += inputs[request] + given - self.steps
        self.prefilling = [entry for entry in self.prefilling if entry[1] < inputs[entry[0]]]
        return True

    def _update_next_change(self) -> None:
        """A lower bound on the next finish: until then membership only grows, so no step is shorter
        than a decode step of the requests decoding now."""
        steps = self.decoding[0][0] - self.steps if self.decoding else INF
        outputs = self.requests.outputs
        spare = 1 if self.model.joining_row_decodes else 0  # its joining step gives it a second token
        for entry in self.prefilling:
            if max(1, outputs[entry[0]] - spare) < steps:
                steps = max(1, outputs[entry[0]] - spare)
        if steps > 1 and self.queue and self._head_fits():
            steps = 1  # admitted at the next step; it may finish with it
        if steps == INF:
            self.next_change = INF
            return
        n = len(self.decoding)
        step = self.model.step(n, self.kv_base + n * self.steps, n)
        self.next_change = max(self.step_end, self.t_free + steps * step)
