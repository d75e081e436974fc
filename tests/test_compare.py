"""`compile.py --compare`: every catalog GPU for one model, ranked by cost per 1M output tokens, by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import compare
import hf_config

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).parent / "fixtures" / "models"


def test_llama_8b_ranking_by_hand():
    rows = compare.compare(hf_config.load(MODELS / "Llama-3.1-8B"))
    # h100 fp8 TP1: 26,415 tokens/s (tests/test_estimate.py) on a3-highgpu-1g at $11.06125/h -> $0.116
    # l4 fp8 TP1, batch 132 (the 100 ms latency bound): 9,083,855,831 B of weights + 132 x 1024 x 65,536 B
    #   of fp8 KV = 17,942,225,879 B / (300e9 x 0.6) = 99.68 ms -> 1,324 tokens/s; g2-standard-8 at
    #   $0.853624/h -> $0.179
    # a100-80gb bf16 TP1, batch 456: 14.96 GiB = 16,063,177,441 B + 456 x 1024 x 131,072 B of KV
    #   = 77,266,461,409 B / (2039e9 x 0.6) = 63.16 ms -> 7,220 tokens/s; $5.06880/h -> $0.195
    # a100-40gb bf16 TP1, batch 168: 16,063,177,441 + 168 x 1024 x 131,072 = 38,611,755,745 B
    #   / (1555e9 x 0.6) = 41.38 ms -> 4,059 tokens/s; $3.673385/h -> $0.251
    # then the GPUs with no recorded price, fastest per GPU first: b200, h200
    assert [r.gpu for r in rows] == ["h100", "l4", "a100-80gb", "a100-40gb", "b200", "h200"]
    assert [r.estimate.cost.on_demand_per_million_tokens for r in rows[:4]] == [0.116, 0.179, 0.195, 0.251]
    assert [r.estimate.output_tokens_per_s_per_gpu for r in rows[:4]] == [26415, 1324, 7220, 4059]


def test_gpus_that_cannot_serve_it_come_last_with_why():
    rows = compare.compare(hf_config.load(MODELS / "gpt-oss-20b"), runtime="llmapi")
    refused = {r.gpu: r.refusal for r in rows if r.plan is None}
    assert [r.gpu for r in rows][-len(refused):] == list(refused)
    assert refused["l4"] == "l4 (compute capability 8.9) has no mxfp4 kernels; GPUs that serve mxfp4: h100, h200, b200"
    assert set(refused) == {"l4", "a100-40gb", "a100-80gb"}


def test_compile_compare_prints_the_ranking():
    command = [sys.executable, str(ROOT / "build" / "compile.py"), "--model", str(MODELS / "Llama-3.1-8B"), "--compare"]
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "cheapest per 1M output tokens first" in table and "no price" in table
    document = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    assert [row["gpu"] for row in document][:4] == ["h100", "l4", "a100-80gb", "a100-40gb"]


def test_a_plan_that_lowers_quality_is_marked_lossy():
    # 405B fits 8 x A100 only below 16 bits (tests/test_planner.py): ranked with the rest, marked
    shape = hf_config.load(MODELS / "Llama-3.1-405B")
    rows = compare.compare(shape)
    assert {r.gpu: r.plan.precision for r in rows if r.plan and not r.plan.keeps_accuracy} == {
        "a100-40gb": "int4_awq", "a100-80gb": "int8_wo"}
    table = compare.format_table(shape, rows)
    assert "int4_awq (lossy)" in table and "int8_wo (lossy)" in table and "fp8 (lossy)" not in table
