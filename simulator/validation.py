"""Measured beside simulated: per load, p50 and p90 of time to first token and end-to-end latency, their
ratio (simulated / measured), and whether each is within the tolerance (issue 21: 20%)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TOLERANCE = 0.2
PERCENTILES = (50, 90)


@dataclass(frozen=True)
class Row:
    load: str  # e.g. "light", "60%"
    rate: float  # requests/s offered
    metric: str  # "TTFT p50", "e2e p90", ...
    measured_s: float
    simulated_s: float

    @property
    def ratio(self) -> float:
        return self.simulated_s / self.measured_s if self.measured_s > 0 else float("inf")

    def within(self, tolerance: float = TOLERANCE) -> bool:
        return abs(self.ratio - 1.0) <= tolerance

    def as_dict(self, tolerance: float = TOLERANCE) -> dict:
        return {**asdict(self), "ratio": self.ratio, "within": self.within(tolerance)}


def rows(load: str, rate: float, measured: dict[str, np.ndarray], simulated: dict[str, np.ndarray]) -> list[Row]:
    """`measured` and `simulated` map "TTFT" and "e2e" to per-request seconds (the same requests)."""
    out = []
    for name in ("TTFT", "e2e"):
        if len(measured[name]) != len(simulated[name]):
            raise ValueError(f"{load}: {len(measured[name])} measured and {len(simulated[name])} simulated "
                             f"{name} values; both must be the same requests")
        for p in PERCENTILES:
            out.append(Row(load, rate, f"{name} p{p}", float(np.percentile(measured[name], p)),
                           float(np.percentile(simulated[name], p))))
    return out


def table(all_rows: list[Row], tolerance: float = TOLERANCE) -> str:
    """A markdown table (it goes in the README as printed)."""
    lines = ["| load | rate (req/s) | metric | measured | simulated | sim/measured | within "
             f"{tolerance:.0%} |", "|---|---|---|---|---|---|---|"]
    for row in all_rows:
        lines.append(f"| {row.load} | {row.rate:.3g} | {row.metric} | {row.measured_s:.3f} s | "
                     f"{row.simulated_s:.3f} s | {row.ratio:.2f} | {'yes' if row.within(tolerance) else 'NO'} |")
    return "\n".join(lines)
