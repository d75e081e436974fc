"""The candidate HPA signals (issue 21 item 5): what each deployed series would read from a simulated
replica, checked against the formula recorded for it (simulator/engine_facts.toml [hpa_signal]) on states
worked out by hand, and the command's side-by-side comparison of them."""

from __future__ import annotations

import json

import pytest
import simulate
from conftest import ROOT
from memory import TOKENS_PER_BLOCK

from simulator.autoscale import METRICS, signal_facts
from simulator.replica import Limits, Replica, Requests, StepModel

LLAMA_8B = ROOT / "tests" / "fixtures" / "models" / "Llama-3.1-8B"
# 1 ms per computed token: a 100-token prompt's prefill is one 100 ms step; decode steps of 10 ms
HAND = StepModel(overhead_s=0.0, weights_s=0.010, kv_token_s=0.0, sequence_s=0.0, token_s=0.001, source="by hand")


def _replica(max_batch_size: int, kv_tokens: int, arrivals: int) -> Replica:
    """`arrivals` requests of 100 tokens in, 50 out, all at time 0, after the first step (the prefill)."""
    requests = Requests([0.0] * arrivals, [100] * arrivals, [50] * arrivals)
    replica = Replica(0, Limits(max_batch_size=max_batch_size, max_num_tokens=4096, kv_tokens=kv_tokens,
                                max_input_len=2048, max_seq_len=4096), HAND, requests)
    for request in range(arrivals):
        replica.add(request)
    replica.advance(0.25)  # the 2 admitted prefilled together (200 tokens: 0 to 0.2 s) and now decode
    return replica


def _recorded(state: dict[str, int]) -> dict[str, int]:
    """Each signal's recorded formula evaluated on a replica state given by hand."""
    names = {**state, "min": min, "max": max}
    return {name: eval(facts["reads"], {"__builtins__": {}}, names)  # noqa: S307 (our own data file)
            for name, facts in signal_facts().items()}


def _read(replica: Replica) -> dict[str, int]:
    return {name: read(replica) for name, read in METRICS.items()}


def test_with_batch_slots_binding_the_backends_waiting_gauge_reads_0_while_requests_wait() -> None:
    # 2 batch slots, KV for every request: 2 decode, 4 wait in the executor's queue (no slot)
    replica = _replica(max_batch_size=2, kv_tokens=1 << 20, arrivals=6)
    state = {"queued": 4, "prefilling": 0, "decoding": 2, "running": 2, "outstanding": 6,
             "active": 2,  # the executor's active set is full at max_batch_size; the 4 are in its queue
             "scheduled": 2}  # both decode
    assert _read(replica) == _recorded(state)
    assert _read(replica)["trt_llm_waiting"] == 0  # finding 4: blind while 4 requests wait for a slot
    assert _read(replica)["requests_waiting"] == 4  # what the overlays' HPA reads counts them


def test_with_kv_binding_the_backends_waiting_gauge_counts_the_requests_without_kv() -> None:
    # 8 slots, KV for 2 requests (100 + 50 tokens each, rounded up to blocks): 2 decode, 4 are active
    # without KV: the executor took them into its batch, the scheduler gives them nothing
    replica = _replica(max_batch_size=8, kv_tokens=2 * -(-150 // TOKENS_PER_BLOCK) * TOKENS_PER_BLOCK, arrivals=6)
    state = {"queued": 4, "prefilling": 0, "decoding": 2, "running": 2, "outstanding": 6,
             "active": 6, "scheduled": 2}
    assert _read(replica) == _recorded(state)
    assert _read(replica)["trt_llm_waiting"] == 4


def test_a_request_in_prefill_counts_until_its_first_token() -> None:
    # one request mid-prefill: no first token, so llm_pod_requests_waiting counts it; the backend schedules it
    requests = Requests([0.0], [100], [50])
    replica = Replica(0, Limits(max_batch_size=2, max_num_tokens=64, kv_tokens=1 << 20, max_input_len=2048,
                                max_seq_len=4096), HAND, requests)
    replica.add(0)
    replica.advance(0.07)  # the first 64-token chunk is done, 36 tokens to go
    state = {"queued": 0, "prefilling": 1, "decoding": 0, "running": 1, "outstanding": 1, "active": 1,
             "scheduled": 1}
    assert _read(replica) == _recorded(state)


def test_every_signal_names_its_deployed_series_and_sources() -> None:
    signals = signal_facts()
    assert set(signals) == set(METRICS)
    assert signals["requests_waiting"]["series"] == "llm_pod_requests_waiting"
    assert signals["trt_llm_waiting"]["series"] == 'nv_trt_llm_request_metrics{request_type="waiting"}'
    for name, facts in signals.items():
        assert facts["fact"] and facts["source"], name


def test_the_compare_prints_every_signal_side_by_side(capsys: pytest.CaptureFixture) -> None:
    code = simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--rate", "5", "--duration", "60",
                          "--hpa-from", str(ROOT / "overlays" / "h100"), "--hpa-max", "3",
                          "--hpa-metric", "compare", "--compare-targets", "2,4"])
    assert code == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines()]
    for name, facts in signal_facts().items():
        assert [row[1].rstrip("*") for row in rows if row and row[0] == name] == ["2", "4"]
        assert facts["series"] in out
    assert sum(1 for row in rows if row and row[0] in METRICS and row[1].endswith("*")) == len(METRICS)


def test_the_compare_judges_each_signal_at_its_cheapest_target_that_meets_the_slo() -> None:
    def run(met: bool, attainment: float, cost: float) -> dict:
        return {"slo": {"met": met, "attainment": attainment}, "cost_per_day_usd": cost}

    assert simulate.best_target({1: run(True, 1.0, 300), 2: run(True, 0.99, 200), 4: run(False, 0.8, 100)}) == 2
    assert simulate.best_target({1: run(False, 0.9, 300), 4: run(False, 0.5, 100)}) == 1


def test_the_compare_as_json_and_its_bad_input(capsys: pytest.CaptureFixture) -> None:
    code = simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--rate", "5", "--duration", "60",
                          "--hpa-from", str(ROOT / "overlays" / "h100"), "--hpa-metric", "compare", "--json"])
    assert code == 0
    compare = json.loads(capsys.readouterr().out)["compare"]
    assert set(compare) == set(METRICS)
    assert {entry["chosen_target"] for entry in compare.values()} == {4.0}  # the overlay's own target
    assert simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--hpa-metric", "compare"]) == 2
    assert "give --hpa-from" in capsys.readouterr().err
    assert simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--compare-targets", "1,2"]) == 2
    assert "--compare-targets goes with --hpa-metric compare" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        simulate.main(["--model", str(LLAMA_8B), "--gpu", "h100", "--hpa-metric", "compare",
                       "--compare-targets", "1,x"])
    assert "not a comma-separated list of numbers" in capsys.readouterr().err


def test_the_help_shows_a_comparison(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        simulate.main(["--help"])
    assert "--hpa-metric compare" in capsys.readouterr().out
