"""A step model (replica.StepModel) fitted to step times measured on a real server, and its file.

Two kinds of measurement, each fitted by linear least squares (numpy):
- decode steps: the gap between consecutive tokens of a stream while every request in the batch is
  decoding (none prefilling), with the batch's size n and KV length: gap = a + kv_token_s x KV + the batch
  term. Its form is chosen by the error on the samples: n (sequence_s x n, the estimate's form), concave in n
  (sqrt n, log n), or n plus a step for more than one row (multi_row_s: a lone row's forward is cheaper than
  the line through the batched ones); each candidate's leave-one-out error is recorded (in-sample error
  always favours the form with more coefficients; left-out samples judge each on data it was not fitted to).
- prefill: the time to first token of a lone request with a P-token prompt, fed in F forwards (chunks):
  ttft = request_latency_s + overhead_s x F + token_s x P, fitted to residuals relative to each time (the
  prompts' times span 20-fold). Each asks for one token, so it is done with its first and leaves before
  any decode forward, even where the runtime decodes a joining row in its joining step
  (joining_row_decodes, which the caller says: it is how the runtime's step loop is written).
The step model's form is overhead_s + max(weights_s + kv_token_s x KV + batch term, token_s x tokens), so
the decode intercept a is overhead_s + weights_s. How a step that carries both decoding rows and a prompt
chunk costs is not in either fit: mixed steps (rows decoding while another request's prompt goes in) are
measured too, and the form that predicts them better is kept: the roofline max of one fused forward (as
TensorRT-LLM batches), or a prompt forward and a decode forward added (separate_prefill, as the CPU
runtime's Decoder.step runs them, the prompt forward's fixed cost beside a decode forward, prompt_forward_s,
being the mixed steps' mean excess over the decode forward and the prompt's tokens: the runtime's per-step
work outside its forwards is not paid twice); both errors are recorded. request_latency_s (the client's
round trip, Triton's queue, the python backend handing the request over and its responses back) is simulated
as a delay added to each request's first token and end: the measurements cannot tell the way in from the way
out. A coefficient that comes out negative (noise on a term too small to see) is fixed at 0 and the rest
refitted.
refit() fits a step-model file's recorded samples again, without a server.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from simulator.replica import SEQUENCE_FORMS, StepModel


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


# The decode step's batch term, each form's columns besides the intercept and KV: (sequence_form, column of
# n, whether a step term for more than one row is fitted)
DECODE_FORMS = {
    "linear": ("linear", False),
    "sqrt": ("sqrt", False),
    "log": ("log", False),
    "one_row": ("linear", True),
}


@dataclass(frozen=True)
class Fit:
    model: StepModel
    decode_rms_s: float  # root mean square residual of the chosen decode form, and of the prefill fit
    prefill_rms_s: float
    decode_forms_rms_s: dict[str, float]  # each decode form's leave-one-out error
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
    refitted until none is negative (enough for a few columns; a term the data cannot see drops out)."""
    free = list(range(columns.shape[1]))
    coefficients = np.zeros(columns.shape[1])
    while free:
        solution, *_ = np.linalg.lstsq(columns[:, free], y, rcond=None)
        if (solution >= 0).all():
            coefficients[free] = solution
            break
        free.pop(int(np.argmin(solution)))
    return coefficients


def decode_columns(form: str, decode: list[DecodeSample]) -> np.ndarray:
    sequence_form, multi_row = DECODE_FORMS[form]
    g = SEQUENCE_FORMS[sequence_form]
    return np.array([[1.0, s.kv_tokens, g(s.sequences), *([float(s.sequences > 1)] if multi_row else [])]
                     for s in decode])


def leave_one_out_rms(columns: np.ndarray, y: np.ndarray) -> float:
    keep = np.ones(len(y), dtype=bool)
    residuals = []
    for i in range(len(y)):
        keep[i] = False
        residuals.append(columns[i] @ nonnegative_lstsq(columns[keep], y[keep]) - y[i])
        keep[i] = True
    return rms(np.array(residuals))


def fit(decode: list[DecodeSample], prefill: list[PrefillSample], source: str,
        mixed: list[MixedSample] = (), joining_row_decodes: bool = False) -> Fit:
    if len(decode) < 3 or len({(s.sequences, round(s.kv_tokens)) for s in decode}) < 3:
        raise ValueError("the decode fit needs samples at three or more batch sizes or KV lengths")
    if len({s.tokens for s in prefill}) < 3 or len({s.forwards for s in prefill}) < 2:
        raise ValueError("the prefill fit needs three or more prompt lengths fed in two or more chunk counts")
    d_y = np.array([s.seconds for s in decode])
    # a form whose columns the samples cannot tell apart (one batch size) is not a candidate
    candidates = {form: decode_columns(form, decode) for form in DECODE_FORMS}
    candidates = {form: x for form, x in candidates.items() if np.linalg.matrix_rank(x) == x.shape[1]} or \
        {"linear": candidates["linear"]}
    errors = {form: leave_one_out_rms(x, d_y) for form, x in candidates.items()}
    # the first (simplest) form wins a tie to the microsecond
    form = min(errors, key=lambda f: (round(errors[f] * 1e6), list(DECODE_FORMS).index(f)))
    d_x = candidates[form]
    d_c = nonnegative_lstsq(d_x, d_y)
    intercept, kv_token_s, sequence_s = d_c[:3]
    sequence_form, multi_row = DECODE_FORMS[form]
    p_y = np.array([s.seconds for s in prefill])
    p_x = np.array([[1.0, s.forwards, s.tokens] for s in prefill])
    # relative residuals: the prompts' times span 20-fold, and a busy machine stretches a long measurement
    # by more seconds than a short one, so plain squares would let one stalled long prompt set the fit
    p_c = nonnegative_lstsq(p_x / p_y[:, None], np.ones(len(p_y)))
    request_latency_s, overhead_s, token_s = p_c
    # the decode intercept is one forward's fixed cost plus reading the weights; what the prefill fit calls
    # a forward's fixed cost is the overhead, the rest is the weights (never below 0)
    overhead_s = min(overhead_s, intercept)
    model = StepModel(overhead_s=float(overhead_s), weights_s=float(intercept - overhead_s),
                      kv_token_s=float(kv_token_s), sequence_s=float(sequence_s), token_s=float(token_s),
                      source=source, sequence_form=sequence_form, multi_row_s=float(d_c[3]) if multi_row else 0.0,
                      joining_row_decodes=joining_row_decodes, request_latency_s=float(request_latency_s))
    mixed_errors = {}
    if mixed:
        m_y = np.array([s.seconds for s in mixed])

        def predicted(candidate: StepModel) -> np.ndarray:
            return np.array([candidate.step(s.decoding + 1, s.kv_tokens, s.decoding + s.prompt_tokens,
                                            s.prompt_tokens) for s in mixed])

        excess = m_y - predicted(replace(model, separate_prefill=True, prompt_forward_s=0.0))
        separate = replace(model, separate_prefill=True, prompt_forward_s=max(0.0, float(np.mean(excess))))
        mixed_errors = {"max": rms(predicted(model) - m_y), "separate": rms(predicted(separate) - m_y)}
        model = separate if mixed_errors["separate"] < mixed_errors["max"] else model
    return Fit(model, rms(d_x @ d_c - d_y), rms(p_x @ p_c - p_y), errors, mixed_errors)


def rms(residuals: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(residuals))))


def to_toml(result: Fit, *, machine: str, command: str, measured_at: str, decode: list[DecodeSample],
            prefill: list[PrefillSample], mixed: list[MixedSample] = (), refitted: str | None = None) -> str:
    """The step-model file (StepModel.from_file reads the coefficients, forms and source; the rest says
    where they came from, with the samples they were fitted to, which refit() reads)."""
    model = result.model

    def text(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    def flag(value: bool) -> str:
        return "true" if value else "false"

    lines = [
        "# A step model measured on a real server by tools/sim_check.py (simulator/calibrate.py fits it).",
        f"source = {text(model.source)}",
        f"machine = {text(machine)}",
        f"command = {text(command)}",
        f"measured_at = {text(measured_at)}",
        *([f"refitted = {text(refitted)}"] if refitted else []),
        "",
        "# seconds; a step = overhead_s + max(weights_s + kv_token_s x KV + sequence_s x g(sequences)",
        "# + multi_row_s if more than one sequence, token_s x tokens), g the sequence_form (n, sqrt n, log n)",
        f"overhead_s = {model.overhead_s:.6g}",
        f"weights_s = {model.weights_s:.6g}",
        f"kv_token_s = {model.kv_token_s:.6g}",
        f"sequence_s = {model.sequence_s:.6g}",
        f"sequence_form = {text(model.sequence_form)}",
        f"multi_row_s = {model.multi_row_s:.6g}",
        f"token_s = {model.token_s:.6g}",
        "# a step with a prompt chunk: a prompt forward plus the decode forward (true), or one fused forward",
        f"separate_prefill = {flag(model.separate_prefill)}",
        *([f"prompt_forward_s = {model.prompt_forward_s:.6g}  # the prompt forward's fixed cost beside a decode one"]
          if model.prompt_forward_s is not None else []),
        "# a row whose prompt's last chunk goes in decodes in the same step: two tokens from its joining step",
        f"joining_row_decodes = {flag(model.joining_row_decodes)}",
        "# each request's latency outside steps (client, Triton's queue, hand-over), added to first token and end",
        f"request_latency_s = {model.request_latency_s:.6g}",
        "",
        "# fit errors (seconds, root mean square): the chosen decode form's and the prefill fit's; each decode",
        "# form's leave-one-out error (the least chose sequence_form and multi_row_s); each mixed-step form's",
        f"decode_fit_rms_s = {result.decode_rms_s:.6g}",
        f"prefill_fit_rms_s = {result.prefill_rms_s:.6g}",
        *(f"decode_form_rms_s_{form} = {error:.6g}" for form, error in result.decode_forms_rms_s.items()),
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


def refit(path: Path, *, joining_row_decodes: bool, command: str) -> Fit:
    """Fit a step-model file's recorded samples again (no server) and write the file back with its samples
    and where they were measured, noting `command` as the refit."""
    raw = tomllib.loads(path.read_text())
    missing = [k for k in ("decode_samples", "prefill_samples", "source", "machine", "command", "measured_at")
               if k not in raw]
    if missing:
        raise ValueError(f"{path}: no {', '.join(missing)} to refit from (a file tools/sim_check.py wrote has them)")
    try:
        decode = [DecodeSample(int(n), float(kv), float(t)) for n, kv, t in raw["decode_samples"]]
        prefill = [PrefillSample(int(p), int(f), float(t)) for p, f, t in raw["prefill_samples"]]
        mixed = [MixedSample(int(n), float(kv), int(p), float(t)) for n, kv, p, t in raw.get("mixed_samples", [])]
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: a sample is not a row of numbers as tools/sim_check.py writes ({error})") from error
    result = fit(decode, prefill, raw["source"], mixed, joining_row_decodes)
    write(path, result, machine=raw["machine"], command=raw["command"], measured_at=raw["measured_at"],
          decode=decode, prefill=prefill, mixed=mixed, refitted=command)
    return result
