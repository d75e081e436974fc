"""tools/recommend.py: the HPA metric the overlays scale on, the search for the cheapest autoscaling that
meets an SLO, and --write: an overlay that tools/validate.py passes, or a refusal that names the value."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import recommend
import validate
from conftest import ROOT

from simulator import recommend as search
from simulator.autoscale import METRICS
from simulator.replica import Limits, Replica, Requests, StepModel
from simulator.report import Slo
from simulator.trace import Trace

LLAMA_8B = ROOT / "tests" / "fixtures" / "models" / "Llama-3.1-8B"
# 1 ms per computed token: a 100-token prompt's prefill is one 100 ms step
HAND = StepModel(overhead_s=0.0, weights_s=0.010, kv_token_s=0.0, sequence_s=0.0, token_s=0.001, source="by hand")


def test_the_hpa_metric_counts_requests_until_their_first_token() -> None:
    # one batch slot: A (t=0) is admitted and prefills until 0.100; B (t=0.01) waits for the slot
    requests = Requests([0.0, 0.01], [100, 100], [50, 50])
    replica = Replica(0, Limits(max_batch_size=1, max_num_tokens=4096, kv_tokens=1 << 20, max_input_len=2048,
                                max_seq_len=4096), HAND, requests)
    replica.add(0)
    replica.add(1)
    replica.advance(0.05)
    # in prefill, A has no first token yet: llm_pod_requests_waiting counts it, the queue alone does not
    assert (METRICS["requests_waiting"](replica), METRICS["not_admitted"](replica)) == (2, 1)
    replica.advance(0.2)
    assert (METRICS["requests_waiting"](replica), METRICS["not_admitted"](replica)) == (1, 1)


def test_the_recommendation_meets_the_slo_for_less_than_static_peak(capsys: pytest.CaptureFixture) -> None:
    code = recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "4", "--duration", "600",
                           "--attainment", "0.95", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    rows = {row["label"]: row for row in result["rows"]}
    best, peak = rows["recommended"], rows["static peak"]
    assert best["meets"] and best["attainment"] >= 0.95 and peak["meets"]
    assert best["cost_per_day_usd"] <= min(peak["cost_per_day_usd"], rows["static peak, Spot"]["cost_per_day_usd"])
    assert best["candidate"]["min_replicas"] >= (2 if best["candidate"]["spot"] else 1)  # validate.py's Spot floor
    assert set(rows) == {"current (l4)", "static peak", "static peak, Spot", "recommended"}
    # the staircase walk: at most one simulation per minReplicas and per target, per Spot share and maxReplicas
    assert result["simulated"] <= 2 * 2 * (best["candidate"]["max_replicas"] + len(search.TARGETS))


def test_no_candidate_cheaper_than_the_recommendation_meets_the_slo() -> None:
    trace = Trace("steady", np.arange(0.0, 300.0, 0.25), np.full(1200, 400), np.full(1200, 100))
    limits = Limits(max_batch_size=8, max_num_tokens=2048, kv_tokens=1 << 16, max_input_len=2048, max_seq_len=4096)
    base = recommend.overlay_hpa(ROOT / "overlays" / "l4")[0]
    setup = search.Setup(trace=trace, limits=limits, model=HAND, gpu="l4", machine_type="g2-standard-8",
                         gpus_per_node=1, slo=Slo(1.0, 0.1), attainment=0.9,
                         balancer="round_robin", base=base, metric="requests_waiting")
    peak = search.static_peak(setup, 16)
    best, tried = search.search(setup, peak.summary["replicas_max"])
    assert best is not None and best.meets
    assert all(not o.meets for o in tried.simulated if o.cost_per_day < best.cost_per_day)


def _args(*extra: str) -> object:
    return recommend.parse_args(["--model", str(LLAMA_8B), "--gpu", "l4", "--slo-ttft-ms", "1500",
                                 "--slo-itl-ms", "80", *extra])


def test_write_gives_an_overlay_that_validates(repo: Path) -> None:
    overlay = repo / "overlays" / "l4"
    candidate = search.Candidate(target=0.5, min_replicas=3, max_replicas=6, spot=True)
    recommend.write(overlay, candidate, True, _args())
    recommend.write(overlay, candidate, True, _args())  # again: the patch is listed once
    assert (overlay / "kustomization.yaml").read_text().count(recommend.HPA_PATCH) == 1
    assert {(p.name, p.stat().st_mode & 0o777) for p in overlay.iterdir()} >= {("hpa.yaml", 0o644),
                                                                                 ("kustomization.yaml", 0o644)}
    results = validate.validate(repo, validate.crd_directory(None), [overlay])
    assert [p for r in results for p in r.problems] == []
    hpa = next(o for o in validate.render(overlay) if o["kind"] == "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 6)
    assert hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] == "0.5"
    rules = [r for o in validate.render(overlay) if o["kind"] == "Rules" for g in o["spec"]["groups"]
             for r in g["rules"] if "alert" in r]
    thresholds = {r["labels"]["threshold"]: r["expr"].rsplit(" > ", 1)[1] for r in rules if "threshold" in r["labels"]}
    assert (thresholds["ttft_p95_seconds"], thresholds["itl_p95_seconds"]) == ("1.5", "0.08")


def test_write_refuses_what_validate_would_reject_and_leaves_the_overlay(repo: Path) -> None:
    overlay = repo / "overlays" / "a100-80gb"  # on demand, two nodes: no maintenance window for one
    before = {p.name: p.read_text() for p in overlay.iterdir()}
    with pytest.raises(recommend.RecommendError, match="minReplicas 1 makes its one pod the service"):
        recommend.write(overlay, search.Candidate(4.0, 1, 4, False), False, _args())
    with pytest.raises(recommend.RecommendError, match="minReplicas 1 on Spot: .* at least 2"):
        recommend.write(repo / "overlays" / "l4", search.Candidate(4.0, 1, 4, True), True, _args())
    with pytest.raises(recommend.RecommendError, match="on-demand only, but .* runs on Spot"):
        recommend.write(repo / "overlays" / "l4", search.Candidate(4.0, 2, 4, False), True, _args())
    assert {p.name: p.read_text() for p in overlay.iterdir()} == before


def test_bad_requests_are_refused_by_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "1", "--duration", "60",
                           "--attainment", "0.9", "--write", str(ROOT / "overlays" / "l4")]) == 2
    assert "below the alerts' percentile (95%)" in capsys.readouterr().err
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "1", "--duration", "60",
                           "--write", str(tmp_path)]) == 2
    assert "no kustomization.yaml there" in capsys.readouterr().err
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "1", "--capacity", "on-demand",
                           "--write", str(ROOT / "overlays" / "l4")]) == 2
    assert "--capacity on-demand, but" in capsys.readouterr().err
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "1", "--attainment", "1.5"]) == 2
    assert "between 0 and 1" in capsys.readouterr().err
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--rate", "1", "--hpa-metric", "outstanding",
                           "--write", str(ROOT / "overlays" / "l4")]) == 2
    assert "--hpa-metric outstanding with --write" in capsys.readouterr().err
    assert recommend.main(["--model", str(LLAMA_8B), "--gpu", "l4", "--profile", "diurnal", "--peak-rate", "2",
                           "--trough-rate", "1", "--duration", "60", "--rate", "3"]) == 2
    assert "--rate scales a trace; a diurnal profile's rates are" in capsys.readouterr().err
