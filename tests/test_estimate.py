"""The estimate beside NVIDIA's measurements (build/published_throughput.toml), and its arithmetic by hand.

An estimate is not a measurement: these tests only keep it within a factor of two of the published one.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import catalog
import estimate
import hf_config
import planner
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).parent / "fixtures" / "models"
PUBLISHED = tomllib.loads((ROOT / "build" / "published_throughput.toml").read_text())


def published_cases() -> list[tuple[dict, str, int]]:
    return [(case, lengths, tokens) for case in PUBLISHED["case"] for lengths, tokens in case["tokens_per_s"].items()]


def ratio(case: dict, lengths: str, published: int) -> float:
    gpu = catalog.gpu(case["gpu"])
    plan = planner.plan(hf_config.load(MODELS / case["model"]), gpu, runtime="engine",
                        precision=case["precision"], tp=case["tp"])
    isl, osl = map(int, lengths.split("/"))
    return estimate.workload_tokens_per_s(plan, gpu, isl, osl) / published


@pytest.mark.parametrize(("case", "lengths", "published"), published_cases(),
                         ids=lambda v: v["model"] + "-" + v["gpu"] if isinstance(v, dict) else str(v))
def test_estimate_is_within_a_factor_of_two_of_nvidias_measurement(case, lengths, published):
    assert 0.5 <= ratio(case, lengths, published) <= 2.0


def comparison_markdown() -> str:
    """The table in docs/gpu-builds.md (between the estimate markers)."""
    rows = ["| model | GPU | precision | TP | ISL/OSL | published tokens/s | estimate | estimate / published |",
            "|---|---|---|---|---|---|---|---|"]
    for case, lengths, published in published_cases():
        r = ratio(case, lengths, published)
        rows.append(f"| {case['model']} | {case['gpu']} | {case['precision']} | {case['tp']} | {lengths} "
                    f"| {published:,} | {round(published * r):,} | {r:.2f} |")
    return "\n".join(rows)


def test_docs_comparison_table_is_current():
    doc = (ROOT / "docs" / "gpu-builds.md").read_text()
    table = doc.split("<!-- estimate:start -->\n", 1)[1].split("\n<!-- estimate:end -->", 1)[0]
    assert table == comparison_markdown(), "docs/gpu-builds.md is stale; paste comparison_markdown() there"


def test_llama_8b_on_h100_estimate_by_hand():
    gpu = catalog.gpu("h100")
    est = estimate.estimate(planner.plan(hf_config.load(MODELS / "Llama-3.1-8B"), gpu, runtime="engine"), gpu)
    # batch 1011 at 1024 KV tokens: 9,083,855,831 + 67,847,061,504 B / (3.35e12 x 0.6) = 38.27 ms
    # -> 1011 / 0.038274 = 26,415 tokens/s; TTFT 2 x 8,030,261,248 x 1024 / (1979e12 x 0.5) = 16.6 ms
    # a3-highgpu-1g: 11.06125 $/h (Spot 4.42447) / (26,415 x 3600) x 1e6 = $0.116 (Spot $0.047) per 1M
    assert (est.batch, est.decode_step_ms, est.output_tokens_per_s, est.ttft_ms) == (1011, 38.27, 26415, 16.6)
    assert est.cost == estimate.Cost("a3-highgpu-1g", 1, 11.06, 4.42, 0.116, 0.047)


def test_a_machine_type_without_a_recorded_price_says_so():
    gpu = catalog.gpu("h200")
    est = estimate.estimate(planner.plan(hf_config.load(MODELS / "Llama-3.1-8B"), gpu, runtime="engine"), gpu)
    assert est.cost is None
    assert dict(estimate.table_rows(est))["cost per 1M output tokens"] == "no price recorded (build/prices.toml)"
