"""What each answer looked like to its client, as Prometheus metrics on Triton's metrics port.

Triton itself cannot say this for a decoupled python model: it counts a request as a success once
execute() takes it, even when the answer is an error response (seen on the local 2.51), it counts
no output tokens, and it has no inter-token latency at all (26.07 adds only a time-to-first-response
histogram, nv_inference_first_response_histogram_ms). The ensemble sees every answer on every
runtime, so it exports them through the python backend's custom metrics (pb_utils.MetricFamily),
which Triton serves beside its own nv_* metrics, labelled like them with model and version.

One observation per answer, never per token: each update is a message to the backend process.

The in-flight gauge counts the requests the ensemble holds, from execute() until their last response:
Triton's pending count sees a request only until execute() takes it. The pod's preStop
(gitops/base/drain.py) waits for both to be 0 before Triton gets SIGTERM.

The waiting gauge counts those of them with no response from tensorrt_llm yet: blocked on a slot here,
queued in front of the runtime's batch (Triton's queue, the CPU model's, TensorRT-LLM's executor queue,
the LLM API's), or in prefill. Counted here because the ensemble is ours on every runtime, where the
C++ backend exports no gauge of its executor's queue and NVIDIA's llmapi model none at all; the HPA
scales on it (gitops/components/monitoring/rules.yaml, llm_pod_requests_waiting).
"""

from __future__ import annotations

import threading
import time

import triton_python_backend_utils as pb_utils

ANSWERS = "llm_answers_total"
OUTPUT_TOKENS = "llm_output_tokens_total"
INTER_TOKEN = "llm_inter_token_latency_seconds"
IN_FLIGHT = "llm_requests_in_flight"
WAITING = "llm_requests_waiting"
OUTCOMES = ("ok", "error", "cancelled")
# A GPU engine's decode step is 10-30 ms, the CPU runtime's 100-300 ms: buckets cover both.
INTER_TOKEN_BUCKETS = [0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0]


class Answer:
    """The output tokens of one answer and when they came from tensorrt_llm, response by response."""

    def __init__(self) -> None:
        self.tokens = 0
        self.first_tokens = 0  # what the first response carried: they all arrived at `first`
        self.first: float | None = None
        self.last: float | None = None

    def count(self, tokens: int) -> None:
        """Tokens that came in one response (a row not streamed): counted, never timed."""
        self.tokens += tokens

    def add(self, count: int) -> None:
        """Tokens of one streamed response, arriving now."""
        if not count:
            return
        self.last = time.monotonic()
        if self.first is None:
            self.first, self.first_tokens = self.last, count
        self.tokens += count

    def inter_token_seconds(self) -> float | None:
        """The mean gap between tokens after the first response: what a streaming client waits per
        token. None for an answer that came in one response (not streamed): it has no gaps."""
        later = self.tokens - self.first_tokens
        if later < 1 or self.first is None or self.last is None:
            return None
        return (self.last - self.first) / later


class AnswerMetrics:
    def __init__(self, model: str, version: str) -> None:
        labels = {"model": model, "version": version}
        # The families must outlive their metrics (python_backend refuses the other order): kept here.
        self.families = {
            ANSWERS: pb_utils.MetricFamily(
                ANSWERS, "Answers the ensemble finished, by outcome (ok, error, cancelled)",
                pb_utils.MetricFamily.COUNTER),
            OUTPUT_TOKENS: pb_utils.MetricFamily(
                OUTPUT_TOKENS, "Output tokens sent to clients (token-id runtimes: cpu, engine)",
                pb_utils.MetricFamily.COUNTER),
            INTER_TOKEN: pb_utils.MetricFamily(
                INTER_TOKEN, "Mean gap between the tokens of each streamed answer, in seconds",
                pb_utils.MetricFamily.HISTOGRAM),
            IN_FLIGHT: pb_utils.MetricFamily(
                IN_FLIGHT, "Requests the ensemble accepted and has not answered yet",
                pb_utils.MetricFamily.GAUGE),
            WAITING: pb_utils.MetricFamily(
                WAITING, "Requests the ensemble accepted with no response from tensorrt_llm yet (waiting for a "
                "batch slot, or in prefill)", pb_utils.MetricFamily.GAUGE),
        }
        self.answers = {o: self.families[ANSWERS].Metric(labels={**labels, "outcome": o}) for o in OUTCOMES}
        self.tokens = self.families[OUTPUT_TOKENS].Metric(labels=labels)
        self.inter_token = self.families[INTER_TOKEN].Metric(labels=labels, buckets=INTER_TOKEN_BUCKETS)
        self.in_flight = self.families[IN_FLIGHT].Metric(labels=labels)
        self.waiting = self.families[WAITING].Metric(labels=labels)
        # execute()'s thread counts a request in, the event loop's counts it out: python_backend's
        # Metric keeps the value of an update in the object while it sends it, with the GIL released.
        self.in_flight_lock = threading.Lock()

    def accepted(self) -> None:
        """A request execute() took: in flight, and waiting until tensorrt_llm first answers it."""
        with self.in_flight_lock:
            self.in_flight.increment(1)
            self.waiting.increment(1)

    def responded(self) -> None:
        """tensorrt_llm's first response to an accepted request: it is in the batch."""
        with self.in_flight_lock:
            self.waiting.increment(-1)

    def finished(self, outcome: str, answer: Answer, waiting: bool) -> None:
        """`waiting`: it ends before any response from tensorrt_llm (refused, failed, cancelled)."""
        with self.in_flight_lock:
            self.in_flight.increment(-1)
            if waiting:
                self.waiting.increment(-1)
        self.answers[outcome].increment(1)
        if answer.tokens:
            self.tokens.increment(answer.tokens)
        gap = answer.inter_token_seconds()
        if gap is not None:
            self.inter_token.observe(gap)
