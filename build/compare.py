"""Which GPU? Plan one model for every catalog GPU and rank the plans by cost per 1M output tokens."""

from __future__ import annotations

from dataclasses import dataclass
from io import StringIO

import catalog
import estimate
import planner
from hf_config import ModelShape
from plan import Plan


@dataclass(frozen=True)
class Row:
    gpu: str
    plan: Plan | None
    estimate: estimate.Estimate | None
    refusal: str  # why it cannot serve the model; empty when it can


def _key(row: Row) -> tuple:
    """Priced plans cheapest first, then unpriced ones fastest per GPU first, then refusals."""
    if row.plan is None:
        return (2, 0.0)
    if row.estimate.cost is None:
        return (1, -row.estimate.output_tokens_per_s_per_gpu)
    return (0, row.estimate.cost.on_demand_per_million_tokens)


def compare(shape: ModelShape, *, runtime: str | None = None, precision: str | None = None,
            max_seq_len: int | None = None) -> list[Row]:
    rows = []
    for gpu in catalog.gpus().values():
        if gpu.is_cpu:
            continue
        try:
            p = planner.plan(shape, gpu, runtime=runtime or gpu.runtimes[0], precision=precision,
                             max_seq_len=max_seq_len)
        except planner.PlanError as error:
            rows.append(Row(gpu.name, None, None, str(error)))
            continue
        rows.append(Row(gpu.name, p, estimate.estimate(p, gpu), ""))
    return sorted(rows, key=_key)


def format_table(shape: ModelShape, rows: list[Row]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{shape.name}: every catalog GPU, cheapest per 1M output tokens first "
                        f"(estimates, not measurements; {estimate.prices()['region']} prices of "
                        f"{estimate.prices()['date']})")
    for column in ("GPU", "machine", "precision", "TP", "batch", "tokens/s per GPU", "TTFT ms",
                   "$/1M on-demand", "$/1M Spot"):
        table.add_column(column, justify="left" if column in ("GPU", "machine", "precision") else "right")
    refused = []
    for row in rows:
        if row.plan is None:
            refused.append(row)
            continue
        cost = row.estimate.cost
        precision = row.plan.precision + ("" if row.plan.keeps_accuracy else " (lossy)")
        table.add_row(row.gpu, row.plan.machine_type, precision, str(row.plan.tp),
                      str(row.plan.max_batch_size), f"{row.estimate.output_tokens_per_s_per_gpu:,}",
                      f"{row.estimate.ttft_ms:g}",
                      f"{cost.on_demand_per_million_tokens:.3f}" if cost else "no price",
                      f"{cost.spot_per_million_tokens:.3f}" if cost else "no price")
    out = StringIO()
    console = Console(file=out, width=120, no_color=True, highlight=False)
    console.print(table)
    for row in refused:
        console.print(f"{row.gpu}: cannot serve it: {row.refusal}")
    return out.getvalue()
