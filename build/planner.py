"""Plan a deployment of one model on one catalog target: precision, tensor parallelism, limits, KV budget.

Memory arithmetic (weights, headroom, KV cache per precision) is build/memory.py's.

The serving objective (docs/gpu-builds.md, "Choosing TP"): output tokens/s per GPU under a latency
bound. Decode is bandwidth-bound; with the KV cache full, a GPU's output rate is its ceiling
(bandwidth / KV bytes of one mean-length sequence) times its KV share = KV budget / (memory -
headroom). TP is the smallest that fits, whose KV share is at least MIN_KV_SHARE, and whose decode step
at batch 1 meets estimate.MAX_TIME_PER_OUTPUT_TOKEN_S; when none has that share, the largest that fits.
Precision, where not given, by the same objective: each precision the GPU has and the runtime serves is
planned with that TP rule, and the accuracy-preserving one (Precision.keeps_accuracy) with the most
estimated output tokens/s per GPU wins, ties to the less lossy; a lossy one only where none of those fits,
and the plan says so (_choose_precision).
max_batch_size = KV tokens / mean sequence length (estimate.MEAN_SEQUENCE_TOKENS), within the latency
bound and TensorRT-LLM's default ceiling; max_num_tokens = that batch's decode tokens plus one
DEFAULT_MAX_NUM_TOKENS prefill chunk. Planning raises PlanError; it never prints.
"""

from __future__ import annotations

from dataclasses import replace

import catalog
import estimate
import runtimes
from catalog import GIB
from hf_config import ModelShape
from memory import PRECISIONS, PREQUANTIZED_MIN_CC, TOKENS_PER_BLOCK, Memory, kv_dtype, memory_for
from plan import Plan

DEFAULT_MAX_SEQ_LEN = 8192  # 128k-context models would otherwise reserve KV for 128k-token requests
DEFAULT_MAX_NUM_TOKENS = 8192  # trtllm-build's own default; chunked context feeds longer prompts in pieces
# trtllm-build enforces no upper bound on --max_batch_size; 2048 is TensorRT-LLM's own default
# (tensorrt_llm/builder.py, BuildConfig.max_batch_size), the largest the planner picks by itself.
MAX_BATCH_SIZE_DEFAULT_LIMIT = 2048
# Doubling TP at KV share s raises it to (1 + s) / 2: below 1/3 that more than doubles each GPU's
# output rate, which pays for the all-reduces; above it the gain is under 2x and halves the replicas.
# Matches NVIDIA's published choices (tests/test_planner.py, reference cases).
MIN_KV_SHARE = 1 / 3
TP_CHOICES = (1, 2, 4, 8)
# TRT-LLM applies this to the memory left after weights and activations; the planner's token budget
# (max_tokens_in_paged_kv_cache) is the binding limit, the fraction only keeps a safety margin.
KV_CACHE_FREE_GPU_MEM_FRACTION = 0.9
CPU_MAX_BATCH_SIZE = 8
CPU_MAX_SEQ_LEN = 2048


class PlanError(ValueError):
    """The model cannot be planned on the target as asked; the message says why and what to pass."""


def _gib(n: int) -> float:
    return round(n / GIB, 2)


def _pow2_floor(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def valid_tps(shape: ModelShape, gpu: catalog.Gpu) -> tuple[int, ...]:
    """TP sizes one node of this GPU can carry that split the model's attention evenly."""
    if gpu.is_cpu:
        return (1,)
    return tuple(t for t in TP_CHOICES if t <= gpu.max_gpus_per_node and _tp_problem(shape, t) is None)


def _tp_problem(shape: ModelShape, tp: int) -> str | None:
    if shape.num_heads % tp:
        return f"{shape.num_heads} attention heads do not split over {tp} GPUs"
    kv = shape.num_kv_heads
    if kv % tp and tp % kv:
        # TRT-LLM shards KV heads, or replicates them when TP is a multiple of their count
        return f"{kv} KV heads neither divide by {tp} nor divide {tp}"
    return None


def _precision_problem(shape: ModelShape, runtime: str, precision: str) -> str | None:
    return runtimes.get(runtime).precision_problem(shape, precision)


def _resolve_precision(shape: ModelShape, gpu: catalog.Gpu, runtime: str, requested: str | None) -> str:
    if gpu.is_cpu:
        if requested not in (None, "fp32"):
            raise PlanError(f"the cpu target runs fp32 only; drop --precision {requested}")
        return "fp32"
    if shape.quant_method:
        method = shape.quant_method
        if requested not in (None, method):
            raise PlanError(
                f"{shape.name} ships pre-quantized as {method} and is served as shipped; "
                f"drop --precision {requested}"
            )
        problem = _precision_problem(shape, runtime, method)
        if problem:
            raise PlanError(problem)
        needed = PREQUANTIZED_MIN_CC.get(method)
        if needed is None:
            raise PlanError(f"{shape.name} is quantized as {method}, which the planner does not know")
        if float(gpu.compute_capability) < needed:
            able = [g.name for g in catalog.gpus().values() if g.compute_capability and
                    float(g.compute_capability) >= needed]
            raise PlanError(
                f"{gpu.name} (compute capability {gpu.compute_capability}) has no {method} kernels; "
                f"GPUs that serve {method}: {', '.join(able)}"
            )
        return method
    if requested is None:
        # The planner chooses (_choose_precision); this is where nothing fits: the precision the refusal
        # is worded at and other GPUs are tried at, the accuracy-preserving one with the fewest bytes.
        usable = _precision_order(gpu, shape, runtime)
        if not usable:
            raise PlanError(f"{gpu.name} supports no precision that the {runtime} runtime serves for {shape.name}")
        accurate = [p for p in usable if PRECISIONS[p].keeps_accuracy]
        return min(accurate or usable, key=lambda p: PRECISIONS[p].linear_bytes)
    if requested not in PRECISIONS:
        raise PlanError(f"unknown precision {requested!r}; known: {', '.join(PRECISIONS)}")
    if requested not in gpu.precisions:
        able = [g.name for g in catalog.gpus().values() if requested in g.precisions]
        raise PlanError(
            f"{gpu.name} (compute capability {gpu.compute_capability}) has no {requested}; "
            f"GPUs with {requested}: {', '.join(able) or 'none'}. "
            f"{gpu.name} supports: {', '.join(gpu.precisions)}"
        )
    problem = _precision_problem(shape, runtime, requested)
    if problem:
        raise PlanError(problem)
    return requested


def _resolve_max_input_len(seq_len: int, requested: int | None) -> int:
    """Half the sequence unless asked: a prompt of tools (an agent's, open-webui's built-in ones) can need
    most of the context, its answer little."""
    if requested is None:
        return seq_len // 2
    if not 1 <= requested < seq_len:
        raise PlanError(f"--max-input-len {requested} must be at least 1 and below max_seq_len ({seq_len}), "
                        "which leaves room for the answer; raise --max-seq-len or lower --max-input-len")
    return requested


def _resolve_max_seq_len(shape: ModelShape, gpu: catalog.Gpu, requested: int | None) -> int:
    limit = shape.max_position_embeddings
    if requested is None:
        return min(CPU_MAX_SEQ_LEN if gpu.is_cpu else DEFAULT_MAX_SEQ_LEN, limit)
    if requested < 2:
        raise PlanError(f"--max-seq-len {requested} is too small; it must hold a prompt and one output token")
    if requested > limit:
        raise PlanError(
            f"--max-seq-len {requested} exceeds {shape.name}'s max_position_embeddings ({limit}); "
            f"pass --max-seq-len {limit} or less"
        )
    return requested


def _fit(shape: ModelShape, gpu: catalog.Gpu, precision: str, tp: int, max_seq_len: int) -> bool:
    return memory_for(shape, gpu, precision, tp).kv_tokens >= max_seq_len


def _precision_order(gpu: catalog.Gpu, shape: ModelShape, runtime: str) -> list[str]:
    """This GPU's usable precisions, least lossy first (PRECISIONS is ordered that way)."""
    return [p for p in PRECISIONS if p in gpu.precisions and _precision_problem(shape, runtime, p) is None]


def _suggestions(
    shape: ModelShape, gpu: catalog.Gpu, runtime: str, precision: str, tp: int, max_seq_len: int,
    precision_given: bool,
) -> list[str]:
    """The nearest options that fit: one flag changed on this GPU first, then a bigger GPU."""
    options: list[str] = []
    if not shape.quant_method and not gpu.is_cpu:
        # same precision, more GPUs
        more = next((t for t in valid_tps(shape, gpu) if _fit(shape, gpu, precision, t, max_seq_len)), None)
        if more is not None:
            options.append(f"--tp {more}")
        # same GPUs, fewer bytes per weight
        if tp in valid_tps(shape, gpu):
            smaller = next((p for p in _precision_order(gpu, shape, runtime)
                            if _fit(shape, gpu, p, tp, max_seq_len)), None)
            if smaller is not None:
                options.append(f"--precision {smaller}")
    mem = memory_for(shape, gpu, precision, tp)
    if mem.kv_tokens >= 2 * TOKENS_PER_BLOCK:
        options.append(f"--max-seq-len {_pow2_floor(mem.kv_tokens)}")
    fits: list[tuple[int, int, str]] = []
    for other in catalog.gpus().values():
        if other.is_cpu or other.memory_gib <= (0 if gpu.is_cpu else gpu.memory_gib):
            continue
        other_runtime = runtime if runtime in other.runtimes else other.runtimes[0]
        try:
            p = _resolve_precision(shape, other, other_runtime, precision if precision_given else None)
        except PlanError:
            continue
        t = next((t for t in valid_tps(shape, other) if _fit(shape, other, p, t, max_seq_len)), None)
        if t is not None:
            # a runtime the other GPU lacks falls back to its default, which needs no flag
            flags = [f"--gpu {other.name}"] + ([f"--tp {t}"] if t != 1 else [])
            fits.append((t, other.memory_gib, " ".join(flags)))
    if fits:
        options.append(min(fits)[2])
    return options


def plan(
    config: ModelShape,
    gpu: catalog.Gpu,
    *,
    runtime: str,
    precision: str | None = None,
    tp: int | None = None,
    max_seq_len: int | None = None,
    max_input_len: int | None = None,
    max_batch_size: int | None = None,
    max_num_tokens: int | None = None,
) -> Plan:
    shape = config
    if runtime not in gpu.runtimes:
        raise PlanError(
            f"{gpu.name} runs the {' or '.join(gpu.runtimes)} runtime; --runtime {runtime} is not one of them"
        )
    problem = runtimes.get(runtime).model_problem(shape, gpu)
    if problem:
        raise PlanError(problem)
    if gpu.is_cpu and tp not in (None, 1):
        raise PlanError(f"the cpu target runs in one process; drop --tp {tp}")
    chosen_precision = _resolve_precision(shape, gpu, runtime, precision)
    seq_len = _resolve_max_seq_len(shape, gpu, max_seq_len)

    tps = valid_tps(shape, gpu)
    if tp is not None and tp not in tps:
        if tp not in TP_CHOICES:
            problem = f"TP must be one of {', '.join(map(str, TP_CHOICES))}"
        elif tp > gpu.max_gpus_per_node:
            problem = f"{gpu.name} nodes carry at most {gpu.max_gpus_per_node} GPUs"
        else:
            problem = _tp_problem(shape, tp)
        raise PlanError(f"--tp {tp} does not work for {shape.name} on {gpu.name}: {problem}; valid: "
                        f"{', '.join(f'--tp {t}' for t in tps)}")
    if precision is None and not gpu.is_cpu and not shape.quant_method:
        chosen = _choose_precision(shape, gpu, runtime, tp, tps, seq_len, max_input_len, max_batch_size,
                                   max_num_tokens)
        if chosen is not None:
            return chosen
        # no precision fits: refused below, in numbers
    if precision is not None:
        precision_reason = "--precision given"
    elif gpu.is_cpu:
        precision_reason = "the cpu target runs fp32"
    else:
        precision_reason = f"the checkpoint's own ({shape.quant_method}), served as shipped"
    if tp is None:
        chosen_tp, tp_reason = _choose_tp(shape, gpu, chosen_precision, tps, seq_len)
    else:
        chosen_tp, tp_reason = tp, "--tp given"

    mem = memory_for(shape, gpu, chosen_precision, chosen_tp)
    if mem.kv_tokens < seq_len:
        raise PlanError(_too_big(shape, gpu, runtime, chosen_precision, chosen_tp, seq_len, mem,
                                 precision_given=precision is not None))

    if gpu.is_cpu:
        planned_batch = CPU_MAX_BATCH_SIZE
        planned_tokens = CPU_MAX_BATCH_SIZE * seq_len
    else:
        planned_batch = _batch(shape, gpu, mem, seq_len, chosen_tp, chosen_precision)
        # every running sequence's decode token plus one prefill chunk per iteration
        planned_tokens = planned_batch + DEFAULT_MAX_NUM_TOKENS
    max_batch_size = _positive("--max-batch-size", max_batch_size) or planned_batch
    max_num_tokens = _positive("--max-num-tokens", max_num_tokens) or planned_tokens
    max_input_len = _resolve_max_input_len(seq_len, max_input_len)
    # A pod takes tp GPUs of the smallest machine that has that many (H200/B200 come only as 8-GPU nodes).
    machine_gpus = 0 if gpu.is_cpu else min(n for n in gpu.machine_types if n >= chosen_tp)
    return Plan(
        model=shape.name,
        architecture=shape.architecture,
        parameters=shape.parameters().total,
        active_parameters=active_parameters(shape),
        gpu=gpu.name,
        accelerator=gpu.accelerator,
        compute_capability=gpu.compute_capability,
        machine_type=gpu.machine_types[machine_gpus],
        runtime=runtime,
        precision=chosen_precision,
        precision_reason=precision_reason,
        keeps_accuracy=PRECISIONS[chosen_precision].keeps_accuracy or chosen_precision == shape.quant_method,
        kv_cache_dtype=kv_dtype(chosen_precision),
        tp=chosen_tp,
        pp=1,
        max_batch_size=max_batch_size,
        max_input_len=max_input_len,
        max_output_len=seq_len - max_input_len,
        max_seq_len=seq_len,
        max_num_tokens=max_num_tokens,
        memory_gib=_gib(mem.memory),
        weights_gib=_gib(mem.weights_total),
        weights_per_gpu_gib=_gib(mem.weights_per_gpu),
        headroom_gib=_gib(mem.headroom),
        kv_bytes_per_token=mem.kv_bytes_per_token,
        kv_budget_gib=_gib(mem.kv_budget),
        kv_tokens=mem.kv_tokens,
        max_len_sequences=mem.kv_tokens // seq_len,
        kv_cache_free_gpu_mem_fraction=KV_CACHE_FREE_GPU_MEM_FRACTION,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        kv_share=round(mem.kv_share, 3),
        tp_reason=tp_reason,
    )


def _positive(flag: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise PlanError(f"{flag} {value} must be at least 1")
    return value


def _per_sequence_s(shape: ModelShape, gpu: catalog.Gpu, mem: Memory, kv_len: int, tp: int) -> float:
    return estimate.sequence_seconds(gpu, mem.kv_bytes_per_token, kv_len,
                                     estimate.allreduce_bytes(shape.num_layers, shape.hidden_size, tp))


def active_parameters(shape: ModelShape) -> int:
    p = shape.parameters()
    if not shape.num_experts:
        return p.total
    return p.total - p.mlp + p.mlp * shape.experts_per_token // shape.num_experts


def _compute_per_sequence_s(shape: ModelShape, gpu: catalog.Gpu, precision: str, tp: int) -> float:
    return estimate.prefill_seconds(gpu, active_parameters(shape), precision, tp, 1)


def _batch(shape: ModelShape, gpu: catalog.Gpu, mem: Memory, seq_len: int, tp: int, precision: str) -> int:
    """As many mean-length sequences as the KV cache holds, within the latency bound: no rounding."""
    kv_len = min(estimate.MEAN_SEQUENCE_TOKENS, seq_len)
    by_kv = mem.kv_tokens // kv_len
    by_latency = estimate.batch_for_latency(gpu, mem.weights_per_gpu, _per_sequence_s(shape, gpu, mem, kv_len, tp),
                                            _compute_per_sequence_s(shape, gpu, precision, tp),
                                            estimate.allreduce_latency_s(shape.num_layers, tp))
    return max(1, min(by_kv, by_latency, MAX_BATCH_SIZE_DEFAULT_LIMIT))


def _choose_tp(shape: ModelShape, gpu: catalog.Gpu, precision: str, tps: tuple[int, ...],
               seq_len: int) -> tuple[int, str]:
    """The serving objective: the smallest TP whose full KV cache reaches MIN_KV_SHARE of the decode
    ceiling within the latency bound; else the largest that fits (the most KV per GPU)."""
    fitting = [t for t in tps if _fit(shape, gpu, precision, t, seq_len)]
    if not fitting:
        return tps[-1], "nothing fits"  # refused below, in numbers
    if gpu.is_cpu:
        return 1, "one process"
    kv_len = min(estimate.MEAN_SEQUENCE_TOKENS, seq_len)
    for t in fitting:
        mem = memory_for(shape, gpu, precision, t)
        per_sequence = _per_sequence_s(shape, gpu, mem, kv_len, t)
        fast = estimate.batch_for_latency(gpu, mem.weights_per_gpu, per_sequence,
                                          _compute_per_sequence_s(shape, gpu, precision, t),
                                          estimate.allreduce_latency_s(shape.num_layers, t)) >= 1
        if mem.kv_share >= MIN_KV_SHARE and fast:
            return t, f"smallest with KV share >= 1/3: {mem.kv_share:.2f}"
    share = memory_for(shape, gpu, precision, fitting[-1]).kv_share
    return fitting[-1], f"none has KV share 1/3; largest: {share:.2f}"


def _choose_precision(shape: ModelShape, gpu: catalog.Gpu, runtime: str, tp: int | None, tps: tuple[int, ...],
                      seq_len: int, max_input_len: int | None, max_batch_size: int | None,
                      max_num_tokens: int | None) -> Plan | None:
    """The serving objective again: every precision this GPU has and the runtime serves, planned with the
    TP rule; of the accuracy-preserving ones that fit, the most estimated output tokens/s per GPU (ties:
    the less lossy, PRECISIONS order); only if none fits, the fastest lossy one, saying so. None if
    nothing fits at all."""
    usable = _precision_order(gpu, shape, runtime)
    fitting = [p for p in usable if _fit(shape, gpu, p, tp or _choose_tp(shape, gpu, p, tps, seq_len)[0], seq_len)]
    if not fitting:
        return None
    plans = {p: plan(shape, gpu, runtime=runtime, precision=p, tp=tp, max_seq_len=seq_len, max_input_len=max_input_len,
                     max_batch_size=max_batch_size, max_num_tokens=max_num_tokens) for p in fitting}
    rate = {p: estimate.estimate(plans[p], gpu).output_tokens_per_s_per_gpu for p in fitting}
    accurate = [p for p in fitting if PRECISIONS[p].keeps_accuracy]
    pool = accurate or fitting
    best = max(pool, key=rate.__getitem__)  # the first of equals: the less lossy
    rates = f"{best} {rate[best]:,} output tokens/s per GPU" + "".join(
        f", {p} {rate[p]:,}" for p in pool if p != best)
    if accurate:
        reason = f"fastest accuracy-preserving: {rates}"
    else:
        lost = ", ".join(p for p in usable if PRECISIONS[p].keeps_accuracy)
        reason = f"lowers quality: no accuracy-preserving precision ({lost}) fits; fastest lossy: {rates}"
    return replace(plans[best], precision_reason=reason)


def _too_big(
    shape: ModelShape, gpu: catalog.Gpu, runtime: str, precision: str, tp: int, seq_len: int, mem: Memory,
    *, precision_given: bool,
) -> str:
    has = f"{gpu.pod_memory_gib} GiB of pod memory" if gpu.is_cpu else f"{gpu.memory_gib:.2f} GiB per GPU"
    one_seq = mem.kv_bytes_per_token * seq_len
    need = mem.weights_per_gpu + mem.headroom + one_seq
    message = (
        f"{gpu.name} has {has}; "
        f"{shape.name} at {precision} with --tp {tp} needs {mem.weights_per_gpu / GIB:.1f} GiB of weights, "
        f"{mem.headroom / GIB:.1f} GiB runtime headroom and {one_seq / GIB:.1f} GiB of KV cache for one "
        f"{seq_len}-token sequence ({need / GIB:.1f} GiB)."
    )
    options = _suggestions(shape, gpu, runtime, precision, tp, seq_len, precision_given)
    if not options:
        return f"{message} No catalog target fits it; pass a smaller --max-seq-len or a smaller model."
    return f"{message} Pass {', or '.join(options)}."


def format_table(plan: Plan, extra_rows: list[tuple[str, str]] | None = None) -> str:
    """The plan as a two-column table, for `--plan`; extra_rows are what later steps derive from it."""
    from io import StringIO

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{plan.model} on {plan.gpu} ({plan.runtime})", show_header=True)
    table.add_column("setting")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", f"{plan.parameters / 1e9:.2f} B"),
        ("accelerator", plan.accelerator or "(none)"),
        ("compute capability", plan.compute_capability or "(none)"),
        ("machine type", plan.machine_type),
        ("precision", plan.precision),
        ("why this precision", plan.precision_reason),
        ("KV cache dtype", plan.kv_cache_dtype),
        ("tensor parallel (GPUs)", str(plan.tp)),
        ("why this TP", plan.tp_reason),
        ("pipeline parallel", str(plan.pp)),
        ("memory per GPU" if plan.accelerator else "pod memory", f"{plan.memory_gib:.2f} GiB"),
        ("weights (whole model)", f"{plan.weights_gib:.2f} GiB"),
        ("weights per GPU", f"{plan.weights_per_gpu_gib:.2f} GiB"),
        ("runtime headroom", f"{plan.headroom_gib:.2f} GiB"),
        ("KV budget per GPU", f"{plan.kv_budget_gib:.2f} GiB"),
        ("KV bytes per token per GPU", f"{plan.kv_bytes_per_token:,}"),
        ("KV tokens", f"{plan.kv_tokens:,}"),
        ("max-length sequences in KV", str(plan.max_len_sequences)),
        ("KV share of usable memory", f"{plan.kv_share:.2f}"),
        ("max_batch_size", str(plan.max_batch_size)),
        ("max_num_tokens", str(plan.max_num_tokens)),
        ("max_seq_len", str(plan.max_seq_len)),
        ("max_input_len", str(plan.max_input_len)),
        ("max_output_len", str(plan.max_output_len)),
    ]
    for name, value in rows + (extra_rows or []):
        table.add_row(name, value)
    out = StringIO()
    Console(file=out, width=72, no_color=True, highlight=False).print(table)
    return out.getvalue()
