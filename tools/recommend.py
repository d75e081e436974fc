"""Recommend the autoscaling that meets a latency SLO at the lowest cost on a trace, and write it into an
overlay. Searches the HPA's target (AverageValue of llm_pod_requests_waiting per pod), minReplicas,
maxReplicas and the Spot share (Spot with an on-demand fallback, or on-demand only) by simulating each
candidate (simulator/recommend.py says how the search stays small), and prints the recommendation beside
the overlay's current settings and static provisioning for the peak: attainment, TTFT and ITL at the SLO
percentile, and cost per day. A simulation, not a measurement: README, "Capacity simulator".

The SLO: --attainment of the requests (default 99%) get their first token within --slo-ttft-ms and a mean
gap between tokens within --slo-itl-ms. --write OVERLAY writes the HPA settings (hpa.yaml, a patch the
overlay's kustomization lists) and the latency alert thresholds (alert-thresholds.yaml: the SLO's targets),
after rendering and validating the result (tools/validate.py) in a copy.

Examples:
  python tools/recommend.py --model tests/fixtures/models/Llama-3.1-8B --gpu l4 --profile diurnal \\
      --peak-rate 8 --trough-rate 1 --duration 86400 --slo-ttft-ms 2000 --plot docs/recommend-l4.png
  python tools/recommend.py --model tests/fixtures/models/Llama-3.1-8B --gpu h100 --rate 20 --json
  python tools/recommend.py --model tests/fixtures/models/Llama-3.1-8B --gpu l4 --rate 6 --capacity spot \\
      --write overlays/l4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "build"), str(ROOT / "tools")]

import catalog  # noqa: E402
import estimate  # noqa: E402
import hf_config  # noqa: E402
import model_source  # noqa: E402
import planner  # noqa: E402
import validate  # noqa: E402
import yaml  # noqa: E402
from policy import capacity, monitoring  # noqa: E402

from simulator import balancer, report, trace  # noqa: E402
from simulator import recommend as search  # noqa: E402
from simulator.autoscale import DEFAULT_METRIC, METRICS  # noqa: E402
from simulator.hpa import HpaSpec, hpa_spec_from_object  # noqa: E402
from simulator.replica import Limits, StepModel  # noqa: E402
from simulator.run import clip  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("GKE_TRITON_CACHE", ROOT / ".cache"))
DEFAULT_TTFT_MS = 2000.0  # as tools/simulate.py: a chat user's patience, our choice
DEFAULT_ITL_MS = estimate.MAX_TIME_PER_OUTPUT_TOKEN_S * 1e3
HPA_PATCH = "hpa.yaml"
# The alerts these settings are sized against: their p95 thresholds become the SLO's targets.
ALERT_KEYS = {"ttft_p95_seconds": "slo_ttft_ms", "itl_p95_seconds": "slo_itl_ms"}
ALERT_PERCENTILE = 0.95


class RecommendError(ValueError):
    """Input the command cannot act on; the message says what to change."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc_head, doc_examples = __doc__.split("\nExamples:\n")
    parser = argparse.ArgumentParser(prog="python tools/recommend.py", description=doc_head.strip(),
                                     epilog="examples:\n" + doc_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder (its config.json) or Hugging Face id")
    parser.add_argument("--gpu", required=True, metavar="TARGET", help=f"one of {', '.join(catalog.gpus())}")
    parser.add_argument("--step-model", type=Path, help="calibrated step-time coefficients (tools/simulate.py)")
    parser.add_argument("--hpa-from", type=Path, metavar="OVERLAY",
                        help="the overlay whose HPA is the current setting and gives the behavior (default: "
                             "overlays/<gpu>)")
    parser.add_argument("--hpa-metric", choices=list(METRICS), default=DEFAULT_METRIC)
    parser.add_argument("--capacity", choices=["search", "spot", "on-demand"], default="search",
                        help="search both Spot (with on-demand fallback) and on-demand only, or keep to one "
                             "(with --write: the written overlay's own)")
    parser.add_argument("--preemptions-per-node-hour", type=float, default=0.0,
                        help="Spot preemption rate (Google publishes none; default 0)")
    parser.add_argument("--balancer", choices=list(balancer.NAMES), default=balancer.gke_ingress_default())
    parser.add_argument("--max-replicas-limit", type=int, default=32,
                        help="the most replicas static provisioning may need (default 32)")
    load = parser.add_argument_group("traffic (as tools/simulate.py)")
    load.add_argument("--trace", default="conv", help="conv, code (bundled) or a CSV file (default conv)")
    load.add_argument("--rate", type=float, help="scale the trace to this many requests/s")
    load.add_argument("--duration", type=float, help="seconds of traffic: the trace repeated or cut to it")
    load.add_argument("--profile", choices=["trace", *trace.DAY_PROFILES], default="trace",
                      help="diurnal: the trace itself over a day, its clock warped to a daily cosine's rate; "
                           "diurnal-poisson: Poisson arrivals on that cosine, lengths from --trace")
    load.add_argument("--peak-rate", type=float)
    load.add_argument("--trough-rate", type=float)
    load.add_argument("--peak-at", type=float, default=14 * 3600)
    load.add_argument("--bursts-per-hour", type=float, default=0.0)
    load.add_argument("--seed", type=int, default=0, help="seeds the diurnal profile and the Spot preemption clock")
    slo = parser.add_argument_group("SLO and output")
    slo.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_TTFT_MS)
    slo.add_argument("--slo-itl-ms", type=float, default=DEFAULT_ITL_MS)
    slo.add_argument("--slo-percentile", type=float, default=90.0, help="the percentile reported (default p90)")
    slo.add_argument("--attainment", type=float, default=0.99,
                     help="the share of requests that must meet both targets (default 0.99)")
    slo.add_argument("--write", type=Path, metavar="OVERLAY", help="write the recommendation into this overlay")
    slo.add_argument("--plot", type=Path, help="a PNG of the recommended run: load, replicas, latency")
    slo.add_argument("--json", action="store_true")
    slo.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    return parser.parse_args(argv)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _traffic(args: argparse.Namespace) -> trace.Trace:
    source = trace.load(args.trace)
    if args.profile != "trace":
        if args.peak_rate is None or args.trough_rate is None or args.duration is None:
            raise RecommendError(f"--profile {args.profile} needs --peak-rate, --trough-rate and --duration")
        if args.rate is not None:
            raise RecommendError("--rate scales a trace; a diurnal profile's rates are --peak-rate and --trough-rate")
        return trace.DAY_PROFILES[args.profile](
            source, duration_s=args.duration, peak_rate=args.peak_rate, trough_rate=args.trough_rate,
            peak_at_s=args.peak_at, bursts_per_hour=args.bursts_per_hour, seed=args.seed)
    return trace.scale(source, rate=args.rate, duration_s=args.duration)


def overlay_hpa(overlay: Path) -> tuple[HpaSpec, bool]:
    """The HPA an overlay renders, and whether it runs on Spot (a spot component in its kustomization)."""
    try:
        objects = validate.render(overlay)
    except (validate.RenderError, validate.ToolError) as error:
        raise RecommendError(f"{overlay}: {error}") from None
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    if len(hpas) != 1:
        raise RecommendError(f"{overlay} renders {len(hpas)} HorizontalPodAutoscalers; the search needs one")
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    spot = any(Path(c).name.startswith("spot") for c in kustomization.get("components", []))
    return hpa_spec_from_object(hpas[0]), spot


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    gpu = catalog.gpu(args.gpu)
    source = model_source.resolve(args.model, args.cache_dir, _log, need_tokenizer=False)
    plan = planner.plan(hf_config.load(source.checkpoint_dir, name=source.name), gpu, runtime=gpu.runtimes[0])
    model = StepModel.from_file(args.step_model) if args.step_model else StepModel.from_plan(plan, gpu)
    limits = Limits.from_plan(plan)
    if args.write is not None:
        _check_writable(args)
    overlay = args.hpa_from or args.write or ROOT / "overlays" / gpu.name
    current_spec, overlay_spot = overlay_hpa(overlay)
    if args.write is not None:
        write_spot = overlay_hpa(args.write)[1]
        if args.capacity != "search" and (args.capacity == "spot") != write_spot:
            raise RecommendError(f"--capacity {args.capacity}, but {args.write} runs "
                                 f"{'on Spot (a spot component)' if write_spot else 'on demand'}; --write sets the "
                                 "HPA and the alerts, not the overlay's components")
    clipped = clip(_traffic(args), limits)
    if not len(clipped.trace):
        raise RecommendError("the trace has no requests within the duration")
    setup = search.Setup(
        trace=clipped.trace, limits=limits, model=model, gpu=gpu.name, machine_type=plan.machine_type,
        gpus_per_node=next(n for n, m in gpu.machine_types.items() if m == plan.machine_type),
        slo=report.Slo(args.slo_ttft_ms / 1e3, args.slo_itl_ms / 1e3, args.slo_percentile),
        attainment=args.attainment, balancer=args.balancer, base=current_spec, metric=args.hpa_metric,
        duration_s=args.duration, preemptions_per_node_hour=args.preemptions_per_node_hour, seed=args.seed)
    _log(f"* {len(clipped.trace):,} requests; finding static provisioning for the peak")
    peak = search.static_peak(setup, args.max_replicas_limit)
    peak_replicas = peak.summary["replicas_max"]
    shares = {"search": (True, False), "spot": (True,), "on-demand": (False,)}[args.capacity]
    if args.write is not None and args.capacity == "search":
        shares = (write_spot,)  # --write sets the HPA, not the overlay's components: keep to its capacity
    _log(f"* static peak: {peak_replicas} replicas; searching the HPA over {len(search.TARGETS)} targets")
    best, tried = search.search(setup, peak_replicas, spot=shares,
                                min_floor={True: capacity.SPOT_MIN_REPLICAS, False: 1})
    current = search.run_candidate(
        setup, search.Candidate(current_spec.target_average_value, current_spec.min_replicas,
                                current_spec.max_replicas, overlay_spot), f"current ({overlay.name})")
    # the peak's count on Spot, at least the two a Spot overlay must keep (tools/policy/capacity.py)
    peak_spot = search.run_static(setup, max(peak_replicas, capacity.SPOT_MIN_REPLICAS), spot=True)
    rows = [current, dataclasses.replace(peak, label="static peak"),
            dataclasses.replace(peak_spot, label="static peak, Spot")]
    rows += [dataclasses.replace(best, label="recommended")] if best else []
    result = {
        "model": plan.model, "gpu": plan.gpu, "machine_type": plan.machine_type, "trace": clipped.trace.name,
        "requests": len(clipped.trace), "duration_s": peak.summary["duration_s"],
        "slo": {"ttft_ms": args.slo_ttft_ms, "itl_ms": args.slo_itl_ms, "attainment": args.attainment,
                "percentile": args.slo_percentile},
        "metric": args.hpa_metric, "rows": [r.row() for r in rows],
        "simulated": len(tried.simulated), "skipped_by_cost": tried.skipped_by_cost,
        "prices": f"{estimate.prices()['region']}, {estimate.prices()['date']}",
        "wall_s": round(time.perf_counter() - started, 1),
    }
    if best is None:
        result["error"] = "no candidate meets the SLO"
    if args.plot and best is not None:
        report.plot(best.summary, setup.slo, args.plot,
                    f"{plan.model} on {plan.gpu}: recommended {best.settings}, {clipped.trace.name}")
        _log(f"* plot: {args.plot}")
    if args.write is not None and best is not None:
        result["written"] = [str(p) for p in write(args.write, best.candidate, write_spot, args)]
    print(json.dumps(result, indent=2) if args.json else format_text(result))
    return 0 if best is not None else 1


def format_text(result: dict) -> str:
    slo = result["slo"]
    p = f"p{slo['percentile']:g}"
    lines = [f"{result['model']} on {result['gpu']} ({result['machine_type']}), trace {result['trace']}: "
             f"{result['requests']:,} requests in {result['duration_s']:,.0f} s; HPA metric {result['metric']}",
             f"SLO: {slo['attainment']:.1%} of requests with first token <= {slo['ttft_ms']:g} ms and inter-token "
             f"latency <= {slo['itl_ms']:g} ms (a simulation, not a measurement)", "",
             f"{'':<22} {'settings':<47} {'meets':>5} {'attained':>8} {'TTFT ' + p:>9} {'ITL ' + p:>7} "
             f"{'replicas':>8} {'$/day':>9}"]
    for row in result["rows"]:
        cost = "no price" if row["cost_per_day_usd"] is None else f"{row['cost_per_day_usd']:,.0f}"
        ttft, itl = row[f"ttft_{p}_ms"], row[f"itl_{p}_ms"]
        lines.append(f"{row['label'][:22]:<22} {row['settings']:<47} {'yes' if row['meets'] else 'no':>5} "
                     f"{row['attainment']:>8.1%} {'-' if ttft is None else f'{ttft:,.0f}':>9} "
                     f"{'-' if itl is None else f'{itl:,.1f}':>7} {row['replicas_min']:>3}-{row['replicas_max']:<4} "
                     f"{cost:>9}")
    if "error" in result:
        lines.append(f"error: {result['error']}; loosen the SLO, lower the rate or raise --max-replicas-limit")
    lines.append(f"{result['simulated']} candidates simulated, {result['skipped_by_cost']} skipped by their cost "
                 f"floor; prices {result['prices']}; {result['wall_s']:.0f} s")
    lines += [f"wrote {path}" for path in result.get("written", [])]
    return "\n".join(lines)


def _check_writable(args: argparse.Namespace) -> None:
    """Refuse, before any simulation, what the written overlay could not hold."""
    if not (args.write / "kustomization.yaml").is_file():
        raise RecommendError(f"--write {args.write}: no kustomization.yaml there (an overlays/<target> folder)")
    if not (args.write / monitoring.THRESHOLDS_FILE).is_file():
        raise RecommendError(f"--write {args.write}: no {monitoring.THRESHOLDS_FILE} to set the alert thresholds in")
    if args.hpa_metric != DEFAULT_METRIC:
        raise RecommendError(f"--hpa-metric {args.hpa_metric} with --write: the overlays' HPA reads "
                             f"{DEFAULT_METRIC} (llm_pod_requests_waiting), so a target searched on another signal "
                             "would be written onto the wrong one; search with the default to write")
    if args.attainment < ALERT_PERCENTILE:
        raise RecommendError(f"--attainment {args.attainment} is below the alerts' percentile "
                             f"({ALERT_PERCENTILE:.0%}): thresholds set to the SLO's targets would fire on the "
                             "recommended settings")


def _patch_text(candidate: search.Candidate, args: argparse.Namespace) -> str:
    return (f"# Written by tools/recommend.py: the HPA settings that met the SLO at the lowest simulated cost\n"
            f"# ({args.attainment:.1%} of requests with first token <= {args.slo_ttft_ms:g} ms and inter-token "
            f"latency <= {args.slo_itl_ms:g} ms;\n# trace {args.trace}, profile {args.profile}). "
            "A JSON patch on components/autoscaling's HPA,\n# applied after the overlay's components.\n"
            f"- op: replace\n  path: /spec/minReplicas\n  value: {candidate.min_replicas}\n"
            f"- op: replace\n  path: /spec/maxReplicas\n  value: {candidate.max_replicas}\n"
            f"- op: replace\n  path: /spec/metrics/0/pods/target/averageValue\n  value: \"{candidate.target:g}\"\n")


def _kustomization_text(text: str) -> str:
    """The overlay's kustomization with the HPA patch listed (once), comments kept."""
    listed = yaml.safe_load(text).get("patches") or []
    if any(p.get("path") == HPA_PATCH for p in listed):
        return text
    entry = (f"  - path: {HPA_PATCH}\n    target:\n      kind: HorizontalPodAutoscaler\n      name: triton\n")
    if re.search(r"^patches:\s*$", text, re.M) is None:
        return text.rstrip("\n") + "\npatches:\n" + entry
    # append to the patches block: before the next top-level key after it, or at the end
    start = re.search(r"^patches:\s*$", text, re.M).end()
    following = re.search(r"^\S", text[start + 1:], re.M)
    at = len(text) if following is None else start + 1 + following.start()
    head = text[:at].rstrip("\n") + "\n"
    return head + entry + text[at:]


def _thresholds_text(text: str, args: argparse.Namespace) -> str:
    for key, attribute in ALERT_KEYS.items():
        value = f"{getattr(args, attribute) / 1e3:g}"
        text, count = re.subn(rf'^(\s+{key}:\s*)"[^"]*"', rf'\g<1>"{value}"', text, flags=re.M)
        if count != 1:
            raise RecommendError(f"{monitoring.THRESHOLDS_FILE} sets {key} {count} times; expected once")
    return text


def staged(overlay: Path, candidate: search.Candidate, args: argparse.Namespace) -> dict[str, str]:
    """The texts of the files --write changes, by name."""
    return {
        HPA_PATCH: _patch_text(candidate, args),
        "kustomization.yaml": _kustomization_text((overlay / "kustomization.yaml").read_text()),
        monitoring.THRESHOLDS_FILE: _thresholds_text((overlay / monitoring.THRESHOLDS_FILE).read_text(), args),
    }


def validate_staged(overlay: Path, files: dict[str, str]) -> list[str]:
    """tools/validate.py's problems with the overlay as written, checked in a copy (gitops, the runbook
    and this overlay under the same names) so a refused write leaves the overlay as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shutil.copytree(ROOT / "gitops", root / "gitops")
        (root / "docs").mkdir()
        shutil.copy(ROOT / "docs" / "runbook.md", root / "docs" / "runbook.md")
        copy = root / "overlays" / overlay.resolve().name
        shutil.copytree(overlay, copy)
        for name, text in files.items():
            (copy / name).write_text(text)
        results = validate.validate(root, validate.crd_directory(None), [copy])
        return [problem for result in results for problem in result.problems]


def write(overlay: Path, candidate: search.Candidate, overlay_spot: bool, args: argparse.Namespace) -> list[Path]:
    if candidate.spot != overlay_spot:
        raise RecommendError(f"the recommendation is {'Spot with fallback' if candidate.spot else 'on-demand only'}, "
                             f"but {overlay} runs {'on Spot' if overlay_spot else 'on demand'}; rerun with --capacity "
                             f"{'spot' if overlay_spot else 'on-demand'} to write, or change its components first")
    if overlay_spot and candidate.min_replicas < capacity.SPOT_MIN_REPLICAS:
        raise RecommendError(f"minReplicas {candidate.min_replicas} on Spot: tools/validate.py requires at least "
                             f"{capacity.SPOT_MIN_REPLICAS} (tools/policy/capacity.py SPOT_MIN_REPLICAS)")
    files = staged(overlay, candidate, args)
    problems = validate_staged(overlay, files)
    if problems:
        raise RecommendError(f"not written: tools/validate.py would reject {overlay} with these settings:\n  "
                             + "\n  ".join(problems))
    written = []
    for name, text in files.items():  # each file replaced whole: a reader sees the old text or the new
        target = overlay / name
        with tempfile.NamedTemporaryFile("w", dir=overlay, prefix=f".{name}.", delete=False) as handle:
            handle.write(text)
        # a temporary file is private (0600); the overlay's files keep their mode, a new one gets a file's usual
        os.chmod(handle.name, target.stat().st_mode & 0o777 if target.exists() else 0o644)
        os.replace(handle.name, target)
        written.append(overlay / name)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (catalog.UnknownGpuError, planner.PlanError, hf_config.ModelConfigError, model_source.ModelSourceError,
            trace.TraceError, RecommendError, ValueError) as error:
        _log(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
