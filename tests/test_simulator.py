"""The capacity simulator's data plane and command: a tiny trace whose times are worked out by hand, the
engine's batch and KV admission limits, what load-aware routing is worth, the plan's estimate reproduced,
trace scaling, the command's report and plot, and bad input named."""

from __future__ import annotations

import json
import math
import tomllib
from pathlib import Path

import catalog
import estimate
import hf_config
import numpy as np
import planner
import pytest
import simulate
from conftest import ROOT

from simulator import balancer
from simulator.autoscale import Autoscaled
from simulator.cluster import Cluster, PoolSpec
from simulator.hpa import Hpa, hpa_spec_from_object
from simulator.metric_path import MetricPath
from simulator.replica import Limits, StepModel
from simulator.report import Slo, summarize
from simulator.run import StaticFleet, replay
from simulator.trace import Trace, TraceError, diurnal, diurnal_rate, diurnal_warp, load, read_csv, scale

LLAMA_8B = ROOT / "tests" / "fixtures" / "models" / "Llama-3.1-8B"
# Decode steps of 10 ms whatever the batch; 1 ms per computed token, so a prefill of N tokens takes N ms.
HAND = StepModel(overhead_s=0.0, weights_s=0.010, kv_token_s=0.0, sequence_s=0.0, token_s=0.001, source="by hand")


def _limits(max_batch_size: int = 64, kv_tokens: int = 1 << 20) -> Limits:
    return Limits(max_batch_size=max_batch_size, max_num_tokens=4096, kv_tokens=kv_tokens, max_input_len=2048,
                  max_seq_len=4096)


def replay_static(trace: Trace, *, limits: Limits, model: StepModel, replicas: int, balancer: str):
    return replay(trace, limits=limits, model=model, balancer=balancer, fleet=StaticFleet(replicas, 1, None))


def _trace(rows: list[tuple[float, int, int]]) -> Trace:
    arrival, inputs, outputs = zip(*rows, strict=True)
    return Trace("test", np.array(arrival, dtype=float), np.array(inputs), np.array(outputs))


@pytest.mark.parametrize("balancer", ["round_robin", "least_outstanding"])
def test_one_replica_times_match_a_hand_computation(balancer: str) -> None:
    # A (t=0, 100 in, 5 out): step 1 prefills it alone, max(10 ms, 100 x 1 ms) = 100 ms: first token at 0.100.
    # B (t=0.05, 20 in, 3 out) joins at the next step: A's decode token + B's 20 prompt tokens = 21 ms,
    # B's first token at 0.121. Then 10 ms decode steps: 0.131, 0.141 (B's 3rd token: done), 0.151 (A's 5th).
    run = replay_static(_trace([(0.0, 100, 5), (0.05, 20, 3)]), limits=_limits(), model=HAND, replicas=1,
                        balancer=balancer)
    assert run.first_token_s == pytest.approx([0.100, 0.121])
    assert run.ttft_s == pytest.approx([0.100, 0.071])
    assert run.e2e_s == pytest.approx([0.151, 0.091])
    assert run.itl_s == pytest.approx([(0.151 - 0.100) / 4, 0.010])


def _two_at_once(limits: Limits) -> list[float]:
    # two requests of 10 prompt tokens and 2 output tokens, both at t=0
    return list(replay_static(_trace([(0.0, 10, 2), (0.0, 10, 2)]), limits=limits, model=HAND, replicas=1,
                       balancer="round_robin").ttft_s)


def test_batch_and_kv_limits_make_requests_wait() -> None:
    # room for both: one step prefills 20 tokens (20 ms), both have their first token at 0.020
    assert _two_at_once(_limits()) == pytest.approx([0.020, 0.020])
    # one batch slot, or KV for one request only (12 tokens reserve a 32-token block; 48 hold one block):
    # the first prefills alone (10 ms), decodes (10 ms, done at 0.020); the second then prefills: 0.030
    assert _two_at_once(_limits(max_batch_size=1)) == pytest.approx([0.010, 0.030])
    assert _two_at_once(_limits(kv_tokens=48)) == pytest.approx([0.010, 0.030])
    assert _two_at_once(_limits(kv_tokens=64)) == pytest.approx([0.020, 0.020])


def test_least_outstanding_beats_round_robin_on_a_skewed_trace() -> None:
    # every other request is long (3 s of decode): a long one every 0.5 s keeps 6 busy, within the 8 slots of
    # two replicas; round robin sends them all to one replica, whose 4 slots fill and queue
    rows = [(i * 0.25, 10, 300 if i % 2 == 0 else 2) for i in range(200)]
    runs = {name: replay_static(_trace(rows), limits=_limits(max_batch_size=4), model=HAND, replicas=2,
                                balancer=name)
            for name in ("round_robin", "least_outstanding")}
    p90 = {name: float(np.percentile(run.ttft_s, 90)) for name, run in runs.items()}
    assert p90["least_outstanding"] < p90["round_robin"] / 2, p90
    assert set(runs["round_robin"].replica[::2]) == {0}  # the skew is what round robin does with it
    # round robin is what a GKE Ingress does (its backend service's default policy, a recorded fact)
    default = simulate.parse_args(["--model", "m", "--gpu", "l4"]).balancer
    assert balancer.gke_ingress_default() == "round_robin" == default


def test_the_engine_model_reproduces_the_plans_estimate() -> None:
    # build/estimate.py (kept within 2x of NVIDIA's published throughput by tests/test_estimate.py) is the
    # default step model: a batch of max_batch_size sequences of its mean length takes its decode step
    gpu = catalog.gpu("h100")
    plan = planner.plan(hf_config.load(LLAMA_8B), gpu, runtime="engine")
    est = estimate.estimate(plan, gpu)
    model = StepModel.from_plan(plan, gpu)
    # the estimate's own form: n, no multi-row step, one token per joining step, no latency outside steps
    assert (model.sequence_form, model.multi_row_s, model.joining_row_decodes, model.request_latency_s) == \
        ("linear", 0.0, False, 0.0)
    batch = plan.max_batch_size
    assert model.step(batch, batch * est.mean_sequence_tokens, batch) * 1e3 == pytest.approx(est.decode_step_ms,
                                                                                            abs=0.01)
    tokens = est.ttft_input_tokens
    assert model.step(1, tokens, tokens) * 1e3 == pytest.approx(est.ttft_ms, abs=0.1)


def _published_cases() -> list[tuple[dict, str, int]]:
    published = tomllib.loads((ROOT / "build" / "published_throughput.toml").read_text())
    return [(case, lengths, tokens) for case in published["case"] for lengths, tokens in case["tokens_per_s"].items()]


def test_the_simulated_engine_is_within_2x_of_nvidias_published_throughput() -> None:
    # trtllm-bench's runs, replayed: every request of exactly ISL in and OSL out queued at once, three times
    # as many as the plan runs together; output tokens over the time the last one ends
    ratios = {}
    for case, lengths, tokens in _published_cases():
        gpu = catalog.gpu(case["gpu"])
        plan = planner.plan(hf_config.load(ROOT / "tests" / "fixtures" / "models" / case["model"]), gpu,
                            runtime="engine", precision=case["precision"], tp=case["tp"])
        isl, osl = map(int, lengths.split("/"))
        n = 3 * min(plan.max_batch_size, plan.kv_tokens // (isl + osl))
        run = replay_static(_trace([(0.0, isl, osl)] * n), limits=Limits.from_plan(plan),
                            model=StepModel.from_plan(plan, gpu), replicas=1, balancer="round_robin")
        ratios[f"{case['model']} {case['gpu']} {lengths}"] = n * osl / run.done_s.max() / tokens
    assert all(0.5 <= r <= 2.0 for r in ratios.values()), ratios
    assert len(ratios) == 32


def test_a_trace_scales_to_a_rate_and_duration_and_a_diurnal_day_is_seeded() -> None:
    conv = load("conv")
    assert len(conv) == 19366 and conv.arrival_s[0] == 0  # the bundled Azure traces, as upstream counts them
    assert len(load("code")) == 8819
    scaled = scale(conv, rate=100, duration_s=600, output_scale=2)
    assert len(scaled) / 600 == pytest.approx(100, rel=0.02) and scaled.arrival_s[-1] < 600
    assert np.all(np.diff(scaled.arrival_s) >= 0)
    assert scaled.output_tokens[:100] == pytest.approx(2 * conv.output_tokens[:100])
    day = dict(duration_s=86400, peak_rate=2.0, trough_rate=0.2, lengths=conv, bursts_per_hour=1, seed=7)
    a, b = diurnal(**day), diurnal(**day)
    assert np.array_equal(a.arrival_s, b.arrival_s)
    per_hour = np.histogram(a.arrival_s, bins=24, range=(0, 86400))[0] / 3600
    assert per_hour[14] > 1.5 and per_hour[2] < 0.6  # the peak at 14:00, the trough at 02:00


def test_the_trace_itself_runs_over_a_day_its_clock_warped_to_the_diurnal_rate() -> None:
    conv = load("conv")
    # at a constant rate the warp is exactly the trace scaled to that rate and repeated
    flat = diurnal_warp(conv, duration_s=1800, peak_rate=20, trough_rate=20)
    scaled = scale(conv, rate=20, duration_s=1800)
    assert len(flat) == len(scaled) and np.allclose(flat.arrival_s, scaled.arrival_s, rtol=0, atol=1e-6)
    day = diurnal_warp(conv, duration_s=86400, peak_rate=8, trough_rate=1)
    # the trace's own order and lengths, repeated back to back
    copies = -(-len(day) // len(conv))
    assert np.array_equal(day.input_tokens, np.tile(conv.input_tokens, copies)[: len(day)])
    assert np.array_equal(day.output_tokens, np.tile(conv.output_tokens, copies)[: len(day)])
    assert np.all(np.diff(day.arrival_s) >= 0) and day.arrival_s[-1] < 86400
    # the count follows the day's expected count, off by no more than the trace's own bursts and lulls do
    # from its mean rate (about 1,000 requests for conv)
    own_lead = np.abs(np.arange(len(conv)) - conv.rate * conv.arrival_s).max()
    hours = np.arange(0, 86401, 3600)
    expected = np.concatenate([[0.0], np.cumsum(diurnal_rate(np.arange(86400.0), peak_rate=8, trough_rate=1,
                                                             period_s=86400, peak_at_s=14 * 3600))])[hours]
    assert np.abs(np.searchsorted(day.arrival_s, hours) - expected).max() <= own_lead + 1
    per_hour = np.diff(np.searchsorted(day.arrival_s, hours)) / 3600
    assert per_hour[13:15].min() > 7 and per_hour[1:3].max() < 1.6  # the peak at 14:00, the trough at 02:00
    # ... and the trace's bursts ride on it: busier minutes than Poisson arrivals at the same rates
    poisson = diurnal(duration_s=86400, peak_rate=8, trough_rate=1, lengths=conv)
    busiest = [np.histogram(t.arrival_s, bins=1440, range=(0, 86400))[0].max() for t in (day, poisson)]
    assert busiest[0] > 1.2 * busiest[1]
    # bursts on the rate curve are seeded
    bursty = dict(duration_s=86400, peak_rate=8, trough_rate=1, bursts_per_hour=1, seed=3)
    assert np.array_equal(diurnal_warp(conv, **bursty).arrival_s, diurnal_warp(conv, **bursty).arrival_s)
    assert len(diurnal_warp(conv, **bursty)) > len(day)


def test_the_command_reports_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    png = tmp_path / "sim.png"
    code = simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--rate", "20", "--duration", "120",
                          "--replicas", "2", "--balancer", "both", "--slo-ttft-ms", "500", "--json",
                          "--plot", str(png)])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    assert document["settings"]["limits"]["max_batch_size"] > 1
    for name in ("round_robin", "least_outstanding"):
        run = document["runs"][name]
        assert run["requests"] == document["settings"]["trace"]["requests"] > 2000
        assert run["ttft_ms"]["p50"] <= run["ttft_ms"]["p90"] <= run["ttft_ms"]["p99"]
        assert run["slo"]["ttft_p90_ms_target"] == 500 and 0 <= run["slo"]["attainment"] <= 1
        # two a3-highgpu-1g nodes for 120 s, at the recorded on-demand price
        assert run["node_hours"] == pytest.approx(2 * 120 / 3600, abs=1e-3)
        price = estimate.prices()["families"]["a3-highgpu"]["on_demand_per_gpu_hour"]
        assert run["cost_usd"] == pytest.approx(2 * 120 / 3600 * price, abs=0.01)
        assert run["cost_per_day_usd"] == pytest.approx(2 * 24 * price, abs=1)
        assert len(run["timeline"]) == 120 and run["timeline"][0]["replicas"] == 2
        assert (tmp_path / f"sim-{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_measured_step_coefficients_load_from_a_file(tmp_path: Path) -> None:
    # the calibration hook: what a later measurement on a real server writes, read back exactly
    coefficients = {"overhead_s": 0.001, "weights_s": 0.02, "kv_token_s": 1e-7, "sequence_s": 1e-5, "token_s": 2e-4}
    path = tmp_path / "cpu-steps.json"
    path.write_text(json.dumps({**coefficients, "source": "measured on the CPU runtime"}))
    model = StepModel.from_file(path)
    assert model == StepModel(**coefficients, source="measured on the CPU runtime")
    assert model.step(2, 100, 2) == pytest.approx(0.001 + max(0.02 + 1e-5 + 2e-5, 4e-4))
    path.write_text(json.dumps({"overhead_s": 0.001, "weights_s": -1}))
    with pytest.raises(ValueError, match="lacks kv_token_s, sequence_s, token_s"):
        StepModel.from_file(path)


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return path


def test_bad_traces_are_refused_naming_the_problem(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(TraceError, match="no output_tokens or GeneratedTokens column"):
        read_csv(_csv(tmp_path, "arrival_s,input_tokens\n0,10\n"))
    with pytest.raises(TraceError, match="line 3: arrival_s -1 is negative"):
        read_csv(_csv(tmp_path, "arrival_s,input_tokens,output_tokens\n0,10,5\n-1,10,5\n"))
    with pytest.raises(TraceError, match="line 2: output_tokens 0 must be at least 1"):
        read_csv(_csv(tmp_path, "arrival_s,input_tokens,output_tokens\n0,10,0\n"))
    with pytest.raises(TraceError, match="line 2: TIMESTAMP 'yesterday' is not a date and time"):
        read_csv(_csv(tmp_path, "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,10,5\n"))
    path = _csv(tmp_path, "arrival_s,output_tokens\n0,10\n")
    assert simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--trace", str(path)]) == 2
    assert "no input_tokens or ContextTokens column" in capsys.readouterr().err
    assert simulate.main(["--model", str(ROOT / "tests" / "fixtures" / "models" / "SmolLM2-135M"), "--gpu", "cpu"]) == 2
    assert "cpu target has no catalog bandwidth" in capsys.readouterr().err
    assert simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--profile", "diurnal", "--peak-rate", "2",
                          "--trough-rate", "1", "--duration", "-60"]) == 2
    assert "duration, period and burst length must be above 0" in capsys.readouterr().err


def _hpa_object(min_replicas: int, max_replicas: int, target: str) -> dict:
    """An HPA as the overlays render it (overlays/h100's behavior), on a Pods metric."""
    metric = {"metric": {"name": "waiting"}, "target": {"type": "AverageValue", "averageValue": target}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "triton"},
            "spec": {"minReplicas": min_replicas, "maxReplicas": max_replicas,
                     "metrics": [{"type": "Pods", "pods": metric}],
                     "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0,
                                              "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}]},
                                  "scaleDown": {"stabilizationWindowSeconds": 600,
                                                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]}}}}


def test_the_hpa_and_the_cluster_add_replicas_that_then_take_requests() -> None:
    # one replica of 4 slots, 1 s answers at 8 requests/s: requests wait; the HPA (target 2 waiting per pod)
    # asks for more, the cluster brings each up after 60 s of provisioning and 60 s of pod start
    pool = PoolSpec(name="fast", spot=False, max_nodes=4, price_per_node_hour=10.0, node_provisioning_s=60,
                    pod_start_s=60, gpus_per_node=1)
    fleet = Autoscaled(Hpa(hpa_spec_from_object(_hpa_object(1, 4, "2"))), Cluster([pool]), MetricPath(15, 0, 300),
                       "not_admitted")
    rows = [(i / 8, 10, 100) for i in range(8 * 900)]
    run = replay(_trace(rows), limits=_limits(max_batch_size=4), model=HAND, balancer="least_outstanding",
                 fleet=fleet, duration_s=900)
    assert run.fleet[0].replicas == 1 and max(p.replicas for p in run.fleet) == 4
    first_added = next(p.t for p in run.fleet if p.replicas > 1)
    assert 120 <= first_added <= 15 + 15 + 10 + 120 + 15  # a sync, a scan, provisioning, pod start, a scrape
    assert set(run.replica[run.trace.arrival_s > first_added + 15]) >= {0, 1}  # the new replica serves
    nodes = [(p.t, p.nodes) for p in run.fleet]
    node_hours = sum(n * (b - a) for (a, n), (b, _) in zip(nodes, nodes[1:] + [(900, 0)], strict=True)) / 3600
    assert summarize(run, Slo(1.0, 0.1), 60)["cost_usd"] == pytest.approx(10 * node_hours, abs=0.01)
    assert not run.failed.any()


def test_the_command_autoscales_with_an_overlays_hpa(capsys: pytest.CaptureFixture) -> None:
    code = simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--rate", "5", "--duration", "60",
                          "--hpa-from", str(ROOT / "overlays" / "h100"), "--hpa-max", "3", "--json"])
    assert code == 0
    document = json.loads(capsys.readouterr().out)
    fleet = document["settings"]["fleet"]
    # minReplicas and the metric's target as overlays/h100 renders them; maxReplicas as overridden
    assert (fleet["min_replicas"], fleet["max_replicas"], fleet["target_average_value"]) == (2, 3, 4.0)
    assert [pool["max_nodes"] for pool in fleet["pools"]] == [3]
    assert document["runs"]["round_robin"]["replicas_min"] == 2  # warm at minReplicas when the trace starts


def test_requests_fail_while_spot_preemptions_leave_no_replica() -> None:
    # one Spot pod, preempted every 2 minutes on average, a minute to replace: some arrivals find none Ready
    pool = PoolSpec(name="spot", spot=True, max_nodes=1, price_per_node_hour=1.0, node_provisioning_s=30,
                    pod_start_s=30, preemptions_per_node_hour=30, gpus_per_node=1)
    fleet = Autoscaled(Hpa(hpa_spec_from_object(_hpa_object(1, 1, "2"))), Cluster([pool], seed=1),
                       MetricPath(15, 0, 300), "not_admitted")
    run = replay(_trace([(i / 2, 10, 5) for i in range(2 * 1800)]), limits=_limits(), model=HAND,
                 balancer="round_robin", fleet=fleet, duration_s=1800)
    summary = summarize(run, Slo(1.0, 0.1), 60)
    assert 0 < summary["failed_no_replica"] < len(run.trace)
    assert summary["slo"]["attainment"] <= 1 - summary["failed_no_replica"] / len(run.trace) + 1e-4  # rounded
    assert min(p.replicas for p in run.fleet) == 0 and summary["replicas_max"] == 1
    json.dumps(summary, allow_nan=False)  # failed requests leave no inf or nan in the report


def test_a_separate_prefill_step_adds_the_prompt_forward_to_the_decode_forward() -> None:
    # The CPU runtime's form: A (t=0, 100 in, 3 out) prefills alone in 100 ms (first token at 0.100); B (t=0.05,
    # 20 in, 2 out) then takes a step of its 20-token prompt forward (20 ms) plus A's decode step (10 ms): 0.130.
    # Then one 10 ms decode step of both: A's third and B's second token at 0.140.
    model = StepModel(**{**vars(HAND), "separate_prefill": True})
    run = replay_static(_trace([(0.0, 100, 3), (0.05, 20, 2)]), limits=_limits(), model=model, replicas=1,
                        balancer="round_robin")
    assert run.first_token_s == pytest.approx([0.100, 0.130])
    assert run.done_s == pytest.approx([0.140, 0.140])


@pytest.mark.parametrize("balancer", ["round_robin", "least_outstanding"])
def test_a_joining_row_decodes_in_its_joining_step_as_the_cpu_runtime_runs_it(balancer: str) -> None:
    # The CPU runtime's form (separate prompt and decode forwards; a row whose prompt completes decodes in the
    # same step), with a 4 ms step for a batch of two or more rows and 5 ms per request outside steps.
    # A (t=0, 100 in, 3 out): its joining step is its 100 ms prompt forward plus a 10 ms decode forward of A
    # alone, which gives A two tokens at 0.110. B (t=0.05, 20 in, 2 out) joins at the next step: its 20 ms
    # prompt forward plus a decode forward of A and B (10 + 4 ms), ending 0.144 with A's third token and B's
    # first two: both done. Seen by the client 5 ms later.
    model = StepModel(**{**vars(HAND), "separate_prefill": True, "joining_row_decodes": True,
                         "multi_row_s": 0.004, "request_latency_s": 0.005})
    run = replay_static(_trace([(0.0, 100, 3), (0.05, 20, 2)]), limits=_limits(), model=model, replicas=1,
                        balancer=balancer)
    assert run.first_token_s == pytest.approx([0.115, 0.149])
    assert run.done_s == pytest.approx([0.149, 0.149])
    # a one-token answer is done with its first token and takes no part in the step's decode forward: A's
    # joining step is its prompt forward alone (100 ms); B's (0.1 s) the same, 20 ms
    run = replay_static(_trace([(0.0, 100, 1), (0.1, 20, 1)]), limits=_limits(), model=model, replicas=1,
                        balancer=balancer)
    assert run.done_s == pytest.approx([0.105, 0.125])


def test_the_batch_term_takes_the_calibrated_form() -> None:
    # log n (concave): 1, 2 and 8 rows cost weights + 0 / log 2 / log 8 x sequence_s, plus multi_row_s above one row
    model = StepModel(overhead_s=0.001, weights_s=0.050, kv_token_s=0.0, sequence_s=0.020, token_s=0.0,
                      sequence_form="log", multi_row_s=0.003)
    assert [model.step(n, 0, n) for n in (1, 2, 8)] == pytest.approx(
        [0.051, 0.054 + 0.020 * math.log(2), 0.054 + 0.020 * math.log(8)])
    with pytest.raises(ValueError, match="sequence_form 'cubic'"):
        StepModel(**{**vars(model), "sequence_form": "cubic"})


def test_a_step_model_file_without_the_later_fields_reads_as_before(tmp_path: Path) -> None:
    # a file written before the batch form, the joining row and the request latency were fitted
    coefficients = {"overhead_s": 0.02, "weights_s": 0.06, "kv_token_s": 7e-6, "sequence_s": 0.006, "token_s": 0.003}
    path = tmp_path / "old.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in coefficients.items()) + "separate_prefill = true\n"
                    "request_overhead_s = 0.059\n")
    model = StepModel.from_file(path)
    assert model == StepModel(**coefficients, source=str(path), separate_prefill=True)
    path.write_text("".join(f"{k} = {v}\n" for k, v in coefficients.items()) + 'sequence_form = "cubic"\n')
    with pytest.raises(ValueError, match="sequence_form 'cubic' must be one of linear, sqrt, log"):
        StepModel.from_file(path)
    path.write_text("".join(f"{k} = {v}\n" for k, v in coefficients.items()) + "joining_row_decodes = 1\n")
    with pytest.raises(ValueError, match="joining_row_decodes must be true or false"):
        StepModel.from_file(path)
