"""Replay a request trace against a deployment: the plan's engine (batching in flight, KV admission,
chunked prefill, step times from build/estimate.py or a calibrated step model) on N replicas behind a
load balancer. Reports time to first token and inter-token latency percentiles, SLO attainment,
replicas and nodes over time, GPU-hours and cost (build/prices.toml), and plots load, replicas and
latency over time. A simulation, not a measurement: README, "Capacity simulator", says what is checked.

Traces: `conv` and `code` (the Azure LLM inference traces 2023, simulator/traces/SOURCE.md), or a CSV
of arrival_s,input_tokens,output_tokens; --rate and --duration scale one to any load, --profile diurnal
runs the trace itself over a day (its own bursts and lengths, its clock warped to a daily rate curve), and
--profile diurnal-poisson makes Poisson arrivals on that curve with lengths drawn from the trace.

Examples:
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu h100 --rate 40 --replicas 2
  python tools/simulate.py --model ./Llama-3.1-8B-Instruct --gpu l4 --trace code --rate 5 --duration 3600 \\
      --replicas 6 --balancer both --slo-ttft-ms 1000 --slo-itl-ms 50 --plot out/sim.png
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu h100 --profile diurnal \\
      --peak-rate 60 --trough-rate 5 --bursts-per-hour 2 --duration 86400 --replicas 4 --json
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu h100 --trace my.csv --spot \\
      --step-model calibrated.json --replicas 3
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu l4 --profile diurnal --peak-rate 8 \\
      --trough-rate 1 --duration 86400 --hpa-from overlays/l4 --hpa-max 12 --plot out/l4-hpa.png
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu h100 --rate 30 --duration 7200 \\
      --hpa-from overlays/h100 --hpa-target 2 --hpa-metric outstanding --spot --preemptions-per-node-hour 0.05
  python tools/simulate.py --model tests/fixtures/models/Llama-3.1-8B --gpu l4 --max-batch-size 16 --profile diurnal \
      --peak-rate 8 --trough-rate 1 --duration 86400 --hpa-from overlays/l4 --hpa-max 16 --hpa-metric compare \
      --compare-targets 1,2,4,8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "build")]

import catalog  # noqa: E402
import estimate  # noqa: E402
import hf_config  # noqa: E402
import model_source  # noqa: E402
import planner  # noqa: E402
import runtimes  # noqa: E402

from simulator import balancer, cluster, report, trace  # noqa: E402
from simulator.autoscale import DEFAULT_METRIC, METRICS, Autoscaled, signal_facts  # noqa: E402
from simulator.hpa import Hpa, HpaSpec, hpa_spec_from_object  # noqa: E402
from simulator.metric_path import MetricPath  # noqa: E402
from simulator.replica import Limits, StepModel  # noqa: E402
from simulator.run import Fleet, StaticFleet, clip, replay  # noqa: E402

DEFAULT_CACHE = Path(os.environ.get("GKE_TRITON_CACHE", ROOT / ".cache"))
# The default SLO: first token within 2 s for 90% of requests (a chat user's patience, our choice), and the
# planner's own latency bound per output token (estimate.MAX_TIME_PER_OUTPUT_TOKEN_S, reading speed).
DEFAULT_TTFT_MS = 2000.0
DEFAULT_ITL_MS = estimate.MAX_TIME_PER_OUTPUT_TOKEN_S * 1e3
TIMELINE_BINS = 120  # rows of the timeline (and steps of the plot) unless --bin-s is given
COMPARE = "compare"  # --hpa-metric compare: every signal in turn


class SimulateError(ValueError):
    """Input the simulator cannot run; the message says what to change."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc_head, doc_examples = __doc__.split("\nExamples:\n")
    parser = argparse.ArgumentParser(prog="python tools/simulate.py", description=doc_head.strip(),
                                     epilog="examples:\n" + doc_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    deploy = parser.add_argument_group("deployment (planned as build/compile.py plans it)")
    deploy.add_argument("--model", required=True, help="checkpoint folder (its config.json) or Hugging Face id")
    deploy.add_argument("--gpu", required=True, metavar="TARGET",
                        help=f"target from the GPU catalog: {', '.join(catalog.gpus())}")
    deploy.add_argument("--runtime", choices=runtimes.names(), help="default: the target's first")
    deploy.add_argument("--precision")
    deploy.add_argument("--tp", type=int)
    deploy.add_argument("--max-seq-len", type=int)
    deploy.add_argument("--max-input-len", type=int)
    deploy.add_argument("--max-batch-size", type=int)
    deploy.add_argument("--max-num-tokens", type=int)
    deploy.add_argument("--step-model", type=Path,
                        help="step-time coefficients (JSON/TOML: overhead_s, weights_s, kv_token_s, sequence_s, "
                             "token_s), e.g. calibrated on a real server; default: the plan's estimate "
                             "(required for the cpu target)")
    deploy.add_argument("--replicas", type=int, default=1,
                        help="serving pods, one per node, fixed: static provisioning (default 1; without --hpa-from)")
    deploy.add_argument("--balancer", choices=[*balancer.NAMES, "both"], default=balancer.gke_ingress_default(),
                        help="round_robin (a GKE Ingress, the default), least_outstanding (an inference-aware "
                             "gateway), or both, to see what routing is worth")
    deploy.add_argument("--spot", action="store_true",
                        help="Spot nodes: static ones priced at Spot rates; with an HPA, a Spot pool first and an "
                             "on-demand fallback pool after it (as a ComputeClass orders them)")
    scale = parser.add_argument_group("autoscaling (the HPA, its metric path and the cluster autoscaler)")
    scale.add_argument("--hpa-from", type=Path, metavar="OVERLAY",
                       help="autoscale with the HorizontalPodAutoscaler this kustomization renders "
                            "(e.g. overlays/h100), its behavior and upstream's defaults")
    scale.add_argument("--hpa-min", type=int, help="override its minReplicas")
    scale.add_argument("--hpa-max", type=int, help="override its maxReplicas")
    scale.add_argument("--hpa-target", type=float, help="override its target averageValue per pod")
    scale.add_argument("--hpa-metric", choices=[*METRICS, COMPARE], default=DEFAULT_METRIC,
                       help="the per-pod gauge the HPA reads, as its deployed series would read the replica "
                            "(simulator/engine_facts.toml [hpa_signal]): requests_waiting (no first token yet, "
                            "queued or in prefill: the overlays' llm_pod_requests_waiting; default), trt_llm_waiting "
                            "(the C++ backend's waiting gauge: active less scheduled, not the executor's queue), "
                            "trt_llm_active (its active gauge, GKE's batch size), outstanding (waiting + running) or "
                            "not_admitted (every request not admitted, a gauge no runtime exports); compare: "
                            "the same trace and HPA once per signal, side by side")
    scale.add_argument("--compare-targets", type=_targets, metavar="LIST",
                       help="with --hpa-metric compare: comma-separated targets (averageValue per pod) tried for "
                            "every signal; each signal's row is its cheapest target that meets the SLO, else its "
                            "best attainment (default: the HPA's one target)")
    scale.add_argument("--pools", choices=["catalog", "nodepools"], default="catalog",
                       help="node pools: catalog (this target's machine, --spot adds a Spot pool first; at most "
                            "maxReplicas nodes each) or nodepools (gitops/nodepools: the ComputeClass's order, "
                            "Spot flags and node limits)")
    scale.add_argument("--preemptions-per-node-hour", type=float, default=0.0,
                       help="Spot preemption rate (Google publishes none; default 0)")
    load = parser.add_argument_group("traffic")
    load.add_argument("--trace", default="conv", help="conv, code (bundled) or a CSV file (default conv)")
    load.add_argument("--rate", type=float, help="scale the trace to this many requests/s")
    load.add_argument("--duration", type=float, help="seconds of traffic: the trace repeated or cut to it")
    load.add_argument("--input-scale", type=float, default=1.0, help="multiply every prompt length")
    load.add_argument("--output-scale", type=float, default=1.0, help="multiply every answer length")
    load.add_argument("--profile", choices=["trace", *trace.DAY_PROFILES], default="trace",
                      help="diurnal: the trace itself, repeated, its gaps divided by a daily cosine's rate (with "
                           "bursts) over its mean rate; diurnal-poisson: Poisson arrivals on that cosine, lengths "
                           "drawn from --trace")
    load.add_argument("--peak-rate", type=float, help="diurnal: requests/s at the peak")
    load.add_argument("--trough-rate", type=float, help="diurnal: requests/s at the trough")
    load.add_argument("--peak-at", type=float, default=14 * 3600, help="diurnal: seconds from start to the peak")
    load.add_argument("--period", type=float, default=86400, help="diurnal: seconds per cycle")
    load.add_argument("--bursts-per-hour", type=float, default=0.0)
    load.add_argument("--burst-factor", type=float, default=3.0, help="a burst multiplies the rate by this")
    load.add_argument("--burst-s", type=float, default=120.0, help="how long a burst lasts")
    load.add_argument("--seed", type=int, default=0, help="seeds the diurnal profile and the Spot preemption clock")
    out = parser.add_argument_group("SLO and report")
    out.add_argument("--slo-ttft-ms", type=float, default=DEFAULT_TTFT_MS)
    out.add_argument("--slo-itl-ms", type=float, default=DEFAULT_ITL_MS)
    out.add_argument("--slo-percentile", type=float, default=90.0)
    out.add_argument("--bin-s", type=float, help=f"timeline resolution (default: the duration / {TIMELINE_BINS})")
    out.add_argument("--plot", type=Path, help="write a PNG of load, replicas and latency over time")
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="model cache for hub ids")
    return parser.parse_args(argv)


def _targets(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every target must be above 0")
    return values


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _traffic(args: argparse.Namespace) -> trace.Trace:
    source = trace.load(args.trace)
    if args.profile != "trace":
        if args.peak_rate is None or args.trough_rate is None or args.duration is None:
            raise SimulateError(f"--profile {args.profile} needs --peak-rate, --trough-rate and --duration")
        if args.rate is not None:
            raise SimulateError("--rate scales a trace; a diurnal profile's rates are --peak-rate and --trough-rate")
        made = trace.DAY_PROFILES[args.profile](
            source, duration_s=args.duration, peak_rate=args.peak_rate, trough_rate=args.trough_rate,
            period_s=args.period, peak_at_s=args.peak_at, bursts_per_hour=args.bursts_per_hour,
            burst_factor=args.burst_factor, burst_s=args.burst_s, seed=args.seed)
        return trace.scale(made, input_scale=args.input_scale, output_scale=args.output_scale)
    return trace.scale(source, rate=args.rate, duration_s=args.duration, input_scale=args.input_scale,
                       output_scale=args.output_scale)


def _node_gpus(plan, gpu: catalog.Gpu) -> int:
    return next(n for n, machine in gpu.machine_types.items() if machine == plan.machine_type)


def _static(args: argparse.Namespace, plan, gpu: catalog.Gpu) -> StaticFleet:
    if args.replicas < 1:
        raise SimulateError(f"--replicas {args.replicas} must be at least 1")
    hourly = estimate.machine_hourly(plan.machine_type, _node_gpus(plan, gpu))
    price = None if hourly is None else hourly[1] if args.spot else hourly[0]
    return StaticFleet(args.replicas, _node_gpus(plan, gpu), price)


def _hpa_spec(args: argparse.Namespace) -> HpaSpec:
    import validate

    try:
        objects = validate.render(args.hpa_from)
    except (validate.RenderError, validate.ToolError) as error:
        raise SimulateError(f"--hpa-from {args.hpa_from}: {error}") from None
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    if len(hpas) != 1:
        raise SimulateError(f"{args.hpa_from} renders {len(hpas)} HorizontalPodAutoscalers; the simulator needs one")
    spec = hpa_spec_from_object(hpas[0])
    overrides = {name: value for name, value in (("min_replicas", args.hpa_min), ("max_replicas", args.hpa_max),
                                                 ("target_average_value", args.hpa_target)) if value is not None}
    return dataclasses.replace(spec, **overrides)


def _autoscaled(args: argparse.Namespace, plan, gpu: catalog.Gpu, spec: HpaSpec, metric: str) -> Autoscaled:
    spot_extra = {"preemptions_per_node_hour": args.preemptions_per_node_hour}
    if args.pools == "nodepools":
        try:
            pools = cluster.pools_from_nodepools(gpu.name, spot_extra)
        except ValueError as error:
            raise SimulateError(f"--pools nodepools: {error} (--pools catalog models the target's machine)") from None
    else:
        gpus = _node_gpus(plan, gpu)
        pools = [cluster.pool_from_catalog(gpu.name, False, spec.max_replicas, gpus)]
        if args.spot:
            pools.insert(0, cluster.pool_from_catalog(gpu.name, True, spec.max_replicas, gpus, **spot_extra))
    if args.preemptions_per_node_hour and not any(pool.spot for pool in pools):
        raise SimulateError("--preemptions-per-node-hour needs a Spot pool: add --spot (or nodepools with one)")
    return Autoscaled(Hpa(spec), cluster.Cluster(pools, seed=args.seed), MetricPath.from_manifests(), metric)


def run(args: argparse.Namespace) -> int:
    gpu = catalog.gpu(args.gpu)
    source = model_source.resolve(args.model, args.cache_dir, _log, need_tokenizer=False)
    shape = hf_config.load(source.checkpoint_dir, name=source.name)
    plan = planner.plan(shape, gpu, runtime=args.runtime or gpu.runtimes[0], precision=args.precision, tp=args.tp,
                        max_seq_len=args.max_seq_len, max_input_len=args.max_input_len,
                        max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens)
    model = StepModel.from_file(args.step_model) if args.step_model else StepModel.from_plan(plan, gpu)
    limits = Limits.from_plan(plan)
    slo = report.Slo(args.slo_ttft_ms / 1e3, args.slo_itl_ms / 1e3, args.slo_percentile)
    clipped = clip(_traffic(args), limits)
    if not len(clipped.trace):
        raise SimulateError("the trace has no requests within the duration")
    if args.hpa_metric == COMPARE:
        if not args.hpa_from:
            raise SimulateError("--hpa-metric compare compares HPA signals: give --hpa-from")
        if args.balancer == "both":
            raise SimulateError("--hpa-metric compare runs one balancer: choose round_robin or least_outstanding")
        if args.plot:
            raise SimulateError("--plot draws one run; --hpa-metric compare makes one per signal and target")
    elif args.compare_targets:
        raise SimulateError("--compare-targets goes with --hpa-metric compare")

    spec = _hpa_spec(args) if args.hpa_from else None  # rendered once

    def simulate(balancer_name: str, metric: str, target: float | None = None) -> tuple[dict, Fleet]:
        # every run gets the same fleet from the same start (and the same Spot preemption clock)
        if spec is None:
            fleet = _static(args, plan, gpu)
        else:
            run_spec = spec if target is None else dataclasses.replace(spec, target_average_value=target)
            fleet = _autoscaled(args, plan, gpu, run_spec, metric)
        result = replay(clipped.trace, limits=limits, model=model, balancer=balancer_name, fleet=fleet,
                        duration_s=args.duration)
        bin_s = args.bin_s or max(1.0, report.duration_s(result) / TIMELINE_BINS)
        return report.summarize(result, slo, bin_s), fleet

    if args.hpa_metric == COMPARE:
        return _compare(args, plan, clipped, slo, model, spec, simulate)
    names = list(balancer.NAMES) if args.balancer == "both" else [args.balancer]
    summaries = {}
    fleet: Fleet | None = None
    for name in names:
        summaries[name], fleet = simulate(name, args.hpa_metric)
    if isinstance(fleet, Autoscaled):
        spec = fleet.hpa.spec
        deployment = {"hpa_from": str(args.hpa_from), "min_replicas": spec.min_replicas,
                      "max_replicas": spec.max_replicas, "target_average_value": spec.target_average_value,
                      "metric": args.hpa_metric, "pools": [dataclasses.asdict(p) for p in fleet.cluster.pools]}
        fleet_text = f"HPA {spec.min_replicas}-{spec.max_replicas} replicas at {spec.target_average_value:g} " \
                     f"{args.hpa_metric} per pod (from {args.hpa_from})"
    else:
        deployment = {"replicas": args.replicas, "machine_type": plan.machine_type, "spot": args.spot}
        fleet_text = f"{args.replicas} replicas (static)"
    settings = {**_settings_head(plan, clipped, fleet_text, model, args), "fleet": deployment}
    if args.plot:
        for name, summary in summaries.items():
            path = args.plot if len(summaries) == 1 else args.plot.with_name(f"{args.plot.stem}-{name}.png")
            report.plot(summary, slo, path, f"{plan.model} on {plan.gpu}: {fleet_text}, {name}, "
                                            f"{clipped.trace.name}")
            _log(f"* plot: {path}")
    if args.json:
        print(json.dumps({"settings": settings, "runs": summaries}, indent=2))
    else:
        print(format_text(settings, summaries, slo))
    return 0


def _settings_head(plan, clipped, fleet_text: str, model: StepModel, args: argparse.Namespace) -> dict:
    return {
        "model": plan.model, "gpu": plan.gpu, "precision": plan.precision, "tp": plan.tp,
        "machine_type": plan.machine_type,
        "limits": {**plan.limits(), "kv_tokens": plan.kv_tokens},
        "step_model": dataclasses.asdict(model),
        "trace": {"name": clipped.trace.name, "requests": len(clipped.trace),
                  "inputs_cut_to_max_input_len": clipped.inputs_cut,
                  "outputs_cut_to_max_seq_len": clipped.outputs_cut},
        "fleet_text": fleet_text,
        "prices": f"{estimate.prices()['region']}, {estimate.prices()['date']}" + (", Spot" if args.spot else ""),
    }


def best_target(runs: dict[float, dict]) -> float:
    """A signal's fair target among those tried: the cheapest that meets the SLO, else the best attainment."""
    met = [target for target, s in runs.items() if s["slo"]["met"]]
    if met:
        return min(met, key=lambda target: (runs[target]["cost_per_day_usd"] or 0.0, -target))
    return max(runs, key=lambda target: (runs[target]["slo"]["attainment"], -target))


def _compare(args: argparse.Namespace, plan, clipped, slo: report.Slo, model: StepModel, spec: HpaSpec,
             simulate) -> int:
    """The same trace, balancer and HPA once per candidate signal (and per target tried), side by side."""
    targets = args.compare_targets or [spec.target_average_value]
    signals = signal_facts()
    runs: dict[str, dict[float, dict]] = {}
    for metric in METRICS:
        runs[metric] = {}
        for target in targets:
            runs[metric][target], _ = simulate(args.balancer, metric, target)
            _log(f"* {metric} at {target:g}: attainment {runs[metric][target]['slo']['attainment']:.1%}")
    chosen = {metric: best_target(by_target) for metric, by_target in runs.items()}
    fleet_text = (f"HPA {spec.min_replicas}-{spec.max_replicas} replicas (from {args.hpa_from}), {args.balancer}, "
                  f"each signal at {', '.join(f'{t:g}' for t in targets)} per pod")
    settings = _settings_head(plan, clipped, fleet_text, model, args)
    if args.json:
        print(json.dumps({"settings": settings, "compare": {
            metric: {"series": signals[metric]["series"], "reads": signals[metric]["reads"],
                     "chosen_target": chosen[metric],
                     "runs": {f"{t:g}": {k: v for k, v in s.items() if k != "timeline"} for t, s in by_target.items()}}
            for metric, by_target in runs.items()}}, indent=2))
    else:
        print(format_compare(settings, runs, chosen, slo))
    return 0


def format_compare(settings: dict, runs: dict[str, dict[float, dict]], chosen: dict[str, float],
                   slo: report.Slo) -> str:
    """One row per signal and target; * marks the target each signal is judged at (best_target)."""
    signals = signal_facts()
    first = next(iter(next(iter(runs.values())).values()))
    t = settings["trace"]
    lines = [
        f"{settings['model']} on {settings['gpu']} ({settings['precision']}, TP {settings['tp']}, "
        f"{settings['machine_type']}), {settings['fleet_text']}; limits {settings['limits']}",
        f"step model: {settings['step_model']['source']}",
        f"trace {t['name']}: {t['requests']:,} requests in {first['duration_s']:,.0f} s "
        f"({first['mean_rate_per_s']:,.2f}/s)",
        f"SLO: p{slo.percentile:g} time to first token <= {slo.ttft_s * 1e3:g} ms and inter-token latency <= "
        f"{slo.itl_s * 1e3:g} ms (a simulation, not a measurement); * = the signal's target judged: the cheapest "
        "that meets the SLO, else the best attainment",
        "",
        f"{'signal':<17} {'target':>7} {'SLO':>4} {'attained':>9} {'TTFT ms p90/p99':>16} {'ITL ms p90/p99':>15} "
        f"{'replicas':>8} {'$/day':>8}  deployed series",
    ]
    for metric, by_target in runs.items():
        for target, s in by_target.items():
            ttft, itl = (f"{_number(s[key]['p90'])}/{_number(s[key]['p99'])}" for key in ("ttft_ms", "itl_ms"))
            day = "-" if s["cost_per_day_usd"] is None else f"{s['cost_per_day_usd']:,.0f}"
            mark = "*" if target == chosen[metric] else " "
            lines.append(f"{metric:<17} {target:>6g}{mark} {'yes' if s['slo']['met'] else 'no':>4} "
                         f"{s['slo']['attainment']:>9.1%} {ttft:>16} {itl:>15} "
                         f"{s['replicas_min']:>3}-{s['replicas_max']:<4} {day:>8}  {signals[metric]['series']}")
    lines.append(f"prices: {settings['prices']}")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _triple(values: dict) -> str:
    return "/".join(_number(v) for v in values.values())


def format_text(settings: dict, summaries: dict[str, dict], slo: report.Slo) -> str:
    t = settings["trace"]
    first = next(iter(summaries.values()))
    lines = [
        f"{settings['model']} on {settings['gpu']} ({settings['precision']}, TP {settings['tp']}, "
        f"{settings['machine_type']}), {settings['fleet_text']}; limits {settings['limits']}",
        f"step model: {settings['step_model']['source']}",
        f"trace {t['name']}: {t['requests']:,} requests in {first['duration_s']:,.0f} s "
        f"({first['mean_rate_per_s']:,.2f}/s); prompts cut to max_input_len: {t['inputs_cut_to_max_input_len']:,}, "
        f"answers cut to max_seq_len: {t['outputs_cut_to_max_seq_len']:,}",
        f"SLO: p{slo.percentile:g} time to first token <= {slo.ttft_s * 1e3:g} ms and inter-token latency <= "
        f"{slo.itl_s * 1e3:g} ms (a simulation, not a measurement)",
        "",
        f"{'balancer':<18} {'TTFT ms p50/p90/p99':>22} {'ITL ms p50/p90/p99':>20} {'e2e s p50/p90':>14} "
        f"{'SLO':>4} {'attained':>9} {'failed':>6} {'replicas':>8} {'GPU-h':>7} {'cost $':>9} {'$/day':>9}",
    ]
    for name, s in summaries.items():
        e2e = "/".join(f"{v / 1e3:.1f}" for v in list(s["e2e_ms"].values())[:2])
        cost = "no price" if s["cost_usd"] is None else f"{s['cost_usd']:,.2f}"
        day = "-" if s["cost_per_day_usd"] is None else f"{s['cost_per_day_usd']:,.0f}"
        lines.append(f"{name:<18} {_triple(s['ttft_ms']):>22} {_triple(s['itl_ms']):>20} {e2e:>14} "
                     f"{'yes' if s['slo']['met'] else 'no':>4} {s['slo']['attainment']:>9.1%} "
                     f"{s['failed_no_replica']:>6,} {s['replicas_min']:>3}-{s['replicas_max']:<4} "
                     f"{s['gpu_hours']:>7,.1f} {cost:>9} {day:>9}")
    lines.append(f"prices: {settings['prices']}; simulated in "
                 + ", ".join(f"{s['simulation_wall_s']:.1f} s" for s in summaries.values()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (catalog.UnknownGpuError, planner.PlanError, hf_config.ModelConfigError, model_source.ModelSourceError,
            trace.TraceError, SimulateError, ValueError) as error:
        _log(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
