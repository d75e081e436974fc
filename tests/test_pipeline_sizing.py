"""The CPU side of a GPU deployment, sized from the engine's bandwidth bound and measured costs: by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import catalog
import hf_config
import pipeline
import planner
import pytest
from plan import Plan

ROOT = Path(__file__).resolve().parent.parent
MODELS = Path(__file__).parent / "fixtures" / "models"


def llama_8b_on_h100() -> Plan:
    shape = hf_config.load(MODELS / "Llama-3.1-8B", name="Llama-3.1-8B")
    return planner.plan(shape, catalog.gpu("h100"), runtime="engine")


def test_engine_peak_by_hand():
    plan = llama_8b_on_h100()
    assert (plan.max_batch_size, plan.weights_per_gpu_gib, plan.kv_bytes_per_token) == (1011, 8.46, 65536)
    # a step reads 8.46 GiB of weights = 9,083,855,831 B and 1011 sequences x 1024 tokens x 65,536 B of KV
    # = 67,847,061,504 B: 76,930,917,335 B; at 0.6 x 3.35e12 B/s that is 38.27 ms (TP 1: no all-reduce),
    # so 1011 / 0.038274 = 26,415 tokens/s (build/estimate.py's decode bound)
    assert pipeline.engine_peak_tokens_per_s(plan, catalog.gpu("h100")) == pytest.approx(26415, abs=1)


def test_enough_ensemble_processes_for_twice_the_peak():
    sizing = pipeline.size(llama_8b_on_h100(), catalog.gpu("h100"), pipeline.Costs(100, 100, 1))
    # twice the peak: 52,830 tokens/s x 100 us = 5.28 cores of ensemble -> 6 processes of 10,000 tokens/s;
    # with tritonserver's 100 us: 10.6 cores of the pod's 23 less 1 for the executor
    assert sizing.to_dict() == {"engine_peak_tokens_per_s": 26415, "ensemble_instances": 6, "cpu_cores_needed": 10.6,
                                "cpu_cores_available": 22, "ceiling_tokens_per_s": 60000, "keeps_up": True}


def test_a_pod_short_of_cpu_says_so_with_its_ceiling():
    sizing = pipeline.size(llama_8b_on_h100(), catalog.gpu("h100"), pipeline.Costs(400, 600, 1))
    # 52,830 x 400 us = 21.1 -> 22 processes wanted; 22 cores / 1,000 us per token = 22,000 tokens/s in all,
    # 22 x 400 / 1,000 = 8 processes of 2,500 tokens/s = 20,000: under twice the peak
    assert (sizing.ensemble_instances, sizing.ceiling_tokens_per_s, sizing.keeps_up) == (8, 20000, False)
    rows = dict(pipeline.table_rows(sizing))
    assert rows["pipeline ceiling"] == "20,000 tokens/s (short of 2x the engine's peak: the pod's CPU is the limit)"


def test_cpu_target_has_one_process():
    assert pipeline.size(llama_8b_on_h100(), catalog.gpu("cpu")) is None
    assert pipeline.table_rows(None) == [("ensemble processes", "1 (the CPU engine is the bottleneck)")]


def test_plan_json_and_table_carry_the_sizing():
    command = [sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "h100", "--model",
               str(MODELS / "Llama-3.1-8B"), "--plan"]
    document = json.loads(subprocess.run([*command, "--json"], capture_output=True, text=True, check=True).stdout)
    measured = pipeline.costs()
    assert document["pipeline"] == pipeline.size(llama_8b_on_h100(), catalog.gpu("h100"), measured).to_dict()
    table = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "ensemble processes" in table and "pipeline ceiling" in table


def test_plan_json_carries_the_estimate():
    command = [sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "h100", "--model",
               str(MODELS / "Llama-3.1-8B"), "--plan", "--json", "--max-batch-size", "512"]
    document = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    assert document["max_batch_size"] == 512
    assert document["estimate"]["batch"] == 512 and document["estimate"]["cost"]["machine_type"] == "a3-highgpu-1g"
