"""Request traces: arrival time, input tokens, output tokens. Read from CSV, scaled to any rate and length
mix, run over a day by warping the trace's own clock to a diurnal rate, or made up as Poisson arrivals on
that diurnal rate (seeded where random: the bursts, the Poisson arrivals and their lengths).

A CSV has a header and one request per row. The columns are named either as the simulator writes them
(arrival_s: seconds, input_tokens, output_tokens) or as the Azure LLM inference traces 2023 name them
(TIMESTAMP: a date and time, ContextTokens, GeneratedTokens); simulator/traces/ ships those two traces
(SOURCE.md there). Rows may come in any order: a trace is sorted by arrival.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRACES = Path(__file__).resolve().parent / "traces"
BUNDLED = {
    "conv": TRACES / "AzureLLMInferenceTrace_conv.csv",
    "code": TRACES / "AzureLLMInferenceTrace_code.csv",
}
# Each field's accepted column names: ours first, then the Azure traces'.
TIME_COLUMNS = ("arrival_s", "TIMESTAMP")
INPUT_COLUMNS = ("input_tokens", "ContextTokens")
OUTPUT_COLUMNS = ("output_tokens", "GeneratedTokens")


class TraceError(ValueError):
    """A trace that cannot be replayed; the message names the file, row and column."""


@dataclass(frozen=True)
class Trace:
    name: str
    arrival_s: np.ndarray  # float64, nondecreasing, >= 0
    input_tokens: np.ndarray  # int64, >= 1
    output_tokens: np.ndarray  # int64, >= 1

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def span_s(self) -> float:
        """First to last arrival plus one mean gap: how long one pass of the trace lasts when tiled."""
        n = len(self)
        if n < 2:
            return 1.0
        gap = (self.arrival_s[-1] - self.arrival_s[0]) / (n - 1)
        return float(self.arrival_s[-1] - self.arrival_s[0] + gap)

    @property
    def rate(self) -> float:
        """Mean requests per second."""
        return len(self) / self.span_s


def _column(header: list[str], names: tuple[str, ...], path: Path) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise TraceError(f"{path}: no {' or '.join(names)} column (columns: {', '.join(header) or 'none'})")


def _tokens(value: str, path: Path, line: int, column: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise TraceError(f"{path} line {line}: {column} {value!r} is not a whole number") from None
    if n < 1:
        raise TraceError(f"{path} line {line}: {column} {n} must be at least 1")
    return n


def read_csv(path: Path | str) -> Trace:
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file (bundled traces: {', '.join(BUNDLED)})")
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = [h.strip() for h in next(rows, [])]
        t_col, i_col, o_col = (_column(header, names, path) for names in (TIME_COLUMNS, INPUT_COLUMNS, OUTPUT_COLUMNS))
        dated = header[t_col] == "TIMESTAMP"
        times: list = []
        inputs: list[int] = []
        outputs: list[int] = []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) <= max(t_col, i_col, o_col):
                raise TraceError(f"{path} line {line}: {len(row)} fields, the header has {len(header)}")
            times.append(_time(row[t_col].strip(), dated, path, line))
            inputs.append(_tokens(row[i_col], path, line, header[i_col]))
            outputs.append(_tokens(row[o_col], path, line, header[o_col]))
    if not times:
        raise TraceError(f"{path}: no requests")
    if dated:
        stamps = np.array(times, dtype="datetime64[ns]")
        arrival = (stamps - stamps.min()) / np.timedelta64(1, "s")
    else:
        arrival = np.array(times, dtype=np.float64)
    order = np.argsort(arrival, kind="stable")
    return Trace(path.stem, arrival[order], np.array(inputs, dtype=np.int64)[order],
                 np.array(outputs, dtype=np.int64)[order])


def _time(value: str, dated: bool, path: Path, line: int):
    if dated:
        try:
            return np.datetime64(value, "ns")
        except ValueError:
            raise TraceError(f"{path} line {line}: TIMESTAMP {value!r} is not a date and time") from None
    try:
        t = float(value)
    except ValueError:
        raise TraceError(f"{path} line {line}: arrival_s {value!r} is not a number of seconds") from None
    if not t >= 0:  # also refuses nan
        raise TraceError(f"{path} line {line}: arrival_s {value} is negative; arrival times start at 0")
    return t


def load(source: str | Path) -> Trace:
    """A bundled trace by name (conv, code) or a CSV file."""
    if str(source) in BUNDLED:
        trace = read_csv(BUNDLED[str(source)])
        return Trace(str(source), trace.arrival_s, trace.input_tokens, trace.output_tokens)
    return read_csv(source)


def scale(trace: Trace, *, rate: float | None = None, duration_s: float | None = None,
          input_scale: float = 1.0, output_scale: float = 1.0) -> Trace:
    """The trace's own arrival pattern at `rate` requests/s (its gaps shrunk or stretched alike), repeated
    back to back to last `duration_s` (cut there); every input/output length times its scale (at least 1)."""
    for name, value in (("rate", rate), ("duration", duration_s), ("input scale", input_scale),
                        ("output scale", output_scale)):
        if value is not None and not value > 0:
            raise TraceError(f"{name} {value} must be above 0")
    factor = 1.0 if rate is None else trace.rate / rate
    arrival = (trace.arrival_s - trace.arrival_s[0]) * factor
    inputs, outputs = trace.input_tokens, trace.output_tokens
    if duration_s is not None:
        span = trace.span_s * factor
        copies = int(np.ceil(duration_s / span))
        arrival = (arrival[None, :] + span * np.arange(copies)[:, None]).ravel()
        keep = arrival < duration_s
        arrival = arrival[keep]
        inputs = np.tile(inputs, copies)[keep]
        outputs = np.tile(outputs, copies)[keep]
    return Trace(f"{trace.name} x{1 / factor:.3g}", arrival,
                 np.maximum(1, np.rint(inputs * input_scale)).astype(np.int64),
                 np.maximum(1, np.rint(outputs * output_scale)).astype(np.int64))


def diurnal_rate(t: np.ndarray, *, peak_rate: float, trough_rate: float, period_s: float,
                 peak_at_s: float) -> np.ndarray:
    """A cosine day: `peak_rate` at peak_at_s, `trough_rate` half a period away."""
    phase = np.cos(2 * np.pi * (t - peak_at_s) / period_s)
    return trough_rate + (peak_rate - trough_rate) * (1 + phase) / 2


def _envelope(*, duration_s: float, peak_rate: float, trough_rate: float, period_s: float, peak_at_s: float,
              bursts_per_hour: float, burst_factor: float, burst_s: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A day's rate as 1 s steps (the diurnal cosine, times `burst_factor` during a Poisson number of bursts,
    `burst_s` long, at random times from `rng`): the step edges and the expected requests up to each."""
    if not 0 <= trough_rate <= peak_rate or peak_rate <= 0:
        raise TraceError(f"rates must satisfy 0 <= trough ({trough_rate}) <= peak ({peak_rate}), peak above 0")
    if duration_s <= 0 or period_s <= 0 or burst_factor < 1 or burst_s <= 0 or bursts_per_hour < 0:
        raise TraceError("duration, period and burst length must be above 0, burst factor at least 1, "
                         "bursts per hour at least 0")
    grid = np.arange(0.0, duration_s + 1.0)  # 1 s steps: the rate is piecewise constant per second
    rate = diurnal_rate(grid[:-1], peak_rate=peak_rate, trough_rate=trough_rate, period_s=period_s,
                        peak_at_s=peak_at_s)
    for start in rng.uniform(0, duration_s, rng.poisson(bursts_per_hour * duration_s / 3600)):
        rate[int(start):int(start + burst_s)] *= burst_factor
    return grid, np.concatenate([[0.0], np.cumsum(rate)])


def diurnal(*, duration_s: float, peak_rate: float, trough_rate: float, lengths: Trace,
            period_s: float = 86400.0, peak_at_s: float = 14 * 3600.0, bursts_per_hour: float = 0.0,
            burst_factor: float = 3.0, burst_s: float = 120.0, seed: int = 0) -> Trace:
    """Poisson arrivals whose rate follows a diurnal cosine, times `burst_factor` during bursts (a Poisson
    number of them, `burst_s` long, at random times); each request's lengths drawn from `lengths`."""
    rng = np.random.default_rng(seed)
    grid, cumulative = _envelope(duration_s=duration_s, peak_rate=peak_rate, trough_rate=trough_rate,
                                 period_s=period_s, peak_at_s=peak_at_s, bursts_per_hour=bursts_per_hour,
                                 burst_factor=burst_factor, burst_s=burst_s, rng=rng)
    # arrivals of a non-homogeneous Poisson process: uniform in cumulative intensity, mapped back to time
    points = np.sort(rng.uniform(0, cumulative[-1], rng.poisson(cumulative[-1])))
    arrival = np.interp(points, cumulative, grid)
    arrival = arrival[arrival < duration_s]
    pick = rng.integers(0, len(lengths), len(arrival))
    return Trace(f"diurnal {trough_rate:g}-{peak_rate:g}/s", arrival, lengths.input_tokens[pick],
                 lengths.output_tokens[pick])


def diurnal_warp(trace: Trace, *, duration_s: float, peak_rate: float, trough_rate: float,
                 period_s: float = 86400.0, peak_at_s: float = 14 * 3600.0, bursts_per_hour: float = 0.0,
                 burst_factor: float = 3.0, burst_s: float = 120.0, seed: int = 0) -> Trace:
    """The trace itself over a day: repeated back to back in its own order and lengths, its clock warped so
    that each gap is divided by the diurnal rate (with any bursts) over the trace's mean rate. Its own bursts
    and lulls ride on the daily curve: request k of the repeated trace, which the trace's mean rate expects
    after k' = rate * (its own time) requests, arrives when the day's expected count reaches k'. At a constant
    rate this is `scale(trace, rate=..., duration_s=...)` exactly."""
    grid, cumulative = _envelope(duration_s=duration_s, peak_rate=peak_rate, trough_rate=trough_rate,
                                 period_s=period_s, peak_at_s=peak_at_s, bursts_per_hour=bursts_per_hour,
                                 burst_factor=burst_factor, burst_s=burst_s,
                                 rng=np.random.default_rng(seed))
    own = trace.arrival_s - trace.arrival_s[0]
    copies = int(np.ceil(cumulative[-1] / len(trace))) + 1  # one pass of the trace is len(trace) expected
    expected = ((own[None, :] + trace.span_s * np.arange(copies)[:, None]) * trace.rate).ravel()
    arrival = np.interp(expected, cumulative, grid)
    keep = (expected < cumulative[-1]) & (arrival < duration_s)
    return Trace(f"{trace.name} over diurnal {trough_rate:g}-{peak_rate:g}/s", arrival[keep],
                 np.tile(trace.input_tokens, copies)[keep], np.tile(trace.output_tokens, copies)[keep])


def _poisson_day(trace: Trace, **day: float) -> Trace:
    return diurnal(lengths=trace, **day)


# The commands' day profiles (--profile beside "trace", the trace scaled by --rate): the trace and the day's
# rate curve (diurnal_warp's keyword arguments) in, the day's requests out.
DAY_PROFILES = {"diurnal": diurnal_warp, "diurnal-poisson": _poisson_day}
