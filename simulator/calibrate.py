"""A step model (replica.StepModel) fitted to step times measured on a real server, and its file.

Two kinds of measurement, each fitted by linear least squares (numpy):
- decode steps: the gap between consecutive tokens of a stream while every request in the batch is
  decoding (none prefilling), with the batch's size and KV length: gap = a + kv_token_s x KV + sequence_s x n;
- prefill: the time to first token of a lone request with a P-token prompt, fed in F forwards (chunks):
  ttft = request_overhead_s + overhead_s x F + token_s x P.
The step model's form is overhead_s + max(weights_s + kv_token_s x KV + sequence_s x n, token_s x tokens), so
the decode intercept a is overhead_s + weights_s. How a step that carries both decoding rows and a prompt
chunk costs is not in either fit: mixed steps (rows decoding while another request's prompt goes in) are
measured too, and the form that predicts them better is kept: the roofline max of one fused forward (as
TensorRT-LLM batches), or a prompt forward and a decode forward added (separate_prefill, as the CPU
runtime's Decoder.step runs them); both errors are recorded. request_overhead_s (the client's round
trip, Triton's queue, the python backend handing the request over) is recorded in the file but is no part
of the step model: the simulator has no per-request latency outside steps, and the comparison says how
much that leaves out. A coefficient that comes out negative (noise on a term too small to see) is fixed
at 0 and the rest refitted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simulator.replica import StepModel


@dataclass(frozen=True)
class DecodeSample:
    sequences: int  # rows in the batch, all decoding
    kv_tokens: float  # their context lengths summed
    seconds: float  # one step


@dataclass(frozen=True)
class PrefillSample:
    tokens: int  # prompt length
    forwards: int  # chunks it was fed in
    seconds: float  # time to first token of a lone request


@dataclass(frozen=True)
class MixedSample:
    decoding: int  # rows decoding in the step
    kv_tokens: float  # their context lengths summed
    prompt_tokens: int  # the prompt chunk fed in the same step
    seconds: float


@dataclass(frozen=True)
class Fit:
    model: StepModel
    request_overhead_s: float  # per request, outside steps (not simulated)
    decode_rms_s: float  # root mean square residual of each fit
    prefill_rms_s: float
    mixed_rms_s: dict[str, float]  # each form's error on the mixed steps: "max", "separate" (empty: none measured)


def medians(samples: list[DecodeSample]) -> list[DecodeSample]:
    """One sample per batch size of a run: the median step and KV length. A busy machine stalls single
    steps now and then; the median keeps those out of the fit, which squares them."""
    by_size: dict[int, list[DecodeSample]] = {}
    for sample in samples:
        by_size.setdefault(sample.sequences, []).append(sample)
    return [DecodeSample(n, float(np.median([s.kv_tokens for s in group])),
                         float(np.median([s.seconds for s in group]))) for n, group in sorted(by_size.items())]


def nonnegative_lstsq(columns: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient at least 0: the most negative one is fixed at 0 and the rest
    refitted until none is negative (enough for three columns; a term the data cannot see drops out)."""
    free = list(range(columns.shape[1]))
    coefficients = np.zeros(columns.shape[1])
    while free:
        solution, *_ = np.linalg.lstsq(columns[:, free], y, rcond=None)
        if (solution >= 0).all():
            coefficients[free] = solution
            break
        free.pop(int(np.argmin(solution)))
    return coefficients


def fit(decode: list[DecodeSample], prefill: list[PrefillSample], source: str,
        mixed: list[MixedSample] = ()) -> Fit:
    if len(decode) < 3 or len({(s.sequences, round(s.kv_tokens)) for s in decode}) < 3:
        raise ValueError("the decode fit needs samples at three or more batch sizes or KV lengths")
    if len({s.tokens for s in prefill}) < 3 or len({s.forwards for s in prefill}) < 2:
        raise ValueError("the prefill fit needs three or more prompt lengths fed in two or more chunk counts")
    d_y = np.array([s.seconds for s in decode])
    d_x = np.array([[1.0, s.kv_tokens, s.sequences] for s in decode])
    intercept, kv_token_s, sequence_s = nonnegative_lstsq(d_x, d_y)
    p_y = np.array([s.seconds for s in prefill])
    p_x = np.array([[1.0, s.forwards, s.tokens] for s in prefill])
    request_overhead_s, overhead_s, token_s = nonnegative_lstsq(p_x, p_y)
    # the decode intercept is one forward's fixed cost plus reading the weights; what the prefill fit calls
    # a forward's fixed cost is the overhead, the rest is the weights (never below 0)
    overhead_s = min(overhead_s, intercept)
    model = StepModel(overhead_s=float(overhead_s), weights_s=float(intercept - overhead_s),
                      kv_token_s=float(kv_token_s), sequence_s=float(sequence_s), token_s=float(token_s),
                      source=source)
    errors = {}
    if mixed:
        m_y = np.array([s.seconds for s in mixed])
        for form, separate in (("max", False), ("separate", True)):
            candidate = replace(model, separate_prefill=separate)
            predicted = [candidate.step(s.decoding + 1, s.kv_tokens, s.decoding + s.prompt_tokens, s.prompt_tokens)
                         for s in mixed]
            errors[form] = rms(np.array(predicted) - m_y)
        model = replace(model, separate_prefill=errors["separate"] < errors["max"])
    return Fit(model, float(request_overhead_s), rms(d_x @ [intercept, kv_token_s, sequence_s] - d_y),
               rms(p_x @ [request_overhead_s, overhead_s, token_s] - p_y), errors)


def rms(residuals: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(residuals))))


def to_toml(result: Fit, *, machine: str, command: str, measured_at: str, decode: list[DecodeSample],
            prefill: list[PrefillSample], mixed: list[MixedSample] = ()) -> str:
    """The step-model file (StepModel.from_file reads the five coefficients and source; the rest says
    where they came from, with the samples they were fitted to)."""
    model = result.model

    def text(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [
        "# A step model measured on a real server by tools/sim_check.py (simulator/calibrate.py fits it).",
        f"source = {text(model.source)}",
        f"machine = {text(machine)}",
        f"command = {text(command)}",
        f"measured_at = {text(measured_at)}",
        "",
        "# seconds; a step = overhead_s + max(weights_s + kv_token_s x KV + sequence_s x sequences, token_s x tokens)",
        f"overhead_s = {model.overhead_s:.6g}",
        f"weights_s = {model.weights_s:.6g}",
        f"kv_token_s = {model.kv_token_s:.6g}",
        f"sequence_s = {model.sequence_s:.6g}",
        f"token_s = {model.token_s:.6g}",
        "# a step with a prompt chunk: a prompt forward plus the decode forward (true), or one fused forward",
        f"separate_prefill = {'true' if model.separate_prefill else 'false'}",
        "",
        "# measured, not simulated: each request's latency outside steps (client, Triton's queue, hand-over)",
        f"request_overhead_s = {result.request_overhead_s:.6g}",
        f"decode_fit_rms_s = {result.decode_rms_s:.6g}",
        f"prefill_fit_rms_s = {result.prefill_rms_s:.6g}",
        *(f"mixed_steps_rms_s_{form} = {error:.6g}" for form, error in result.mixed_rms_s.items()),
        "",
        "# [sequences, kv_tokens, seconds] per decode step; [tokens, forwards, seconds] per lone prefill",
        "decode_samples = [",
        *(f"  [{s.sequences}, {s.kv_tokens:.6g}, {s.seconds:.6g}]," for s in decode),
        "]",
        "prefill_samples = [",
        *(f"  [{s.tokens}, {s.forwards}, {s.seconds:.6g}]," for s in prefill),
        "]",
        "# [decoding, kv_tokens, prompt_tokens, seconds] per step with a prompt chunk",
        "mixed_samples = [",
        *(f"  [{s.decoding}, {s.kv_tokens:.6g}, {s.prompt_tokens}, {s.seconds:.6g}]," for s in mixed),
        "]",
    ]
    return "\n".join(lines) + "\n"


def write(path: Path, result: Fit, **provenance) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(result, **provenance))
