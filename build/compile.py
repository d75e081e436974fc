"""Compile an open LLM for a GPU target and lay out its Triton model repository.

Plans the deployment for the target (precision, tensor parallelism, batch and KV limits, or a clear
refusal), builds what the runtime needs (a TensorRT-LLM engine on GPUs, a safetensors checkpoint for
the CPU target), lays out the model repository and writes build.json beside it.

Examples:
  python build/compile.py --gpu cpu                          # the embedded SmolLM2-135M-Instruct
  python build/compile.py --gpu h100 --model ./Llama-3.1-8B-Instruct --plan
  python build/compile.py --gpu l4 --model ./Qwen2.5-7B-Instruct --plan --json
  python build/compile.py --model ./Llama-3.1-70B-Instruct --compare     # which GPU? ranked by $/1M tokens
  python build/compile.py --gpu h100 --model meta-llama/Llama-3.1-8B-Instruct --precision fp8 --tp 2
  python build/compile.py --gpu cpu --out /tmp/repo --publish gs://my-bucket/models
  python build/compile.py --gpu cpu --max-seq-len 8192 --max-input-len 7168   # prompts with many tools
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import build_memory
import catalog
import compare
import estimate
import hf_config
import layout
import manifest
import model_source
import pipeline
import planner
import runtimes
import templating
from plan import Plan

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("GKE_TRITON_CACHE", ROOT / ".cache"))
DEFAULT_OUT = ROOT / "out"


class CompileError(RuntimeError):
    """A step cannot go on; the message says what to change."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def templates_sha256() -> str:
    digest = hashlib.sha256()
    build_code = sorted(p for p in (ROOT / "build").rglob("*.py") if "__pycache__" not in p.parts)
    for path in [*layout.template_files(), *build_code]:
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def versions_for(runtime: str) -> dict[str, str | None]:
    pins = catalog.versions()
    uses_trtllm = runtimes.get(runtime).uses_tensorrt_llm
    return {
        "triton_image": pins["triton"]["image"],
        "triton_release": pins["triton"]["container_release"],
        "tensorrt_llm": pins["tensorrt_llm"]["version"] if uses_trtllm else None,
        "tensorrt": pins["tensorrt_llm"]["tensorrt"] if uses_trtllm else None,
    }


def recipe_for(plan: Plan, source: model_source.ModelSource, options: layout.Options) -> dict:
    return {
        "model": {"name": source.name, "source": source.source, "weights_sha256": source.weights_sha256},
        "target": {"gpu": plan.gpu, "accelerator": plan.accelerator, "compute_capability": plan.compute_capability},
        "runtime": plan.runtime,
        # What its tensorrt_llm step enforces and returns, for the gateway (build/runtimes/__init__.py).
        "capabilities": asdict(runtimes.get(plan.runtime).capabilities),
        "versions": versions_for(plan.runtime),
        "precision": plan.precision,
        "tp": plan.tp,
        "pp": plan.pp,
        "limits": plan.limits(),
        "plan": plan.to_dict(),
        "options": asdict(options),
        "templates_sha256": templates_sha256(),
    }


def build_repository(plan: Plan, source: model_source.ModelSource, options: layout.Options,
                     out_dir: Path, publish_uri: str | None = None, job_model: str = "",
                     build: build_memory.BuildNeeds | None = None) -> tuple[dict, bool]:
    """Lay out the repository (or keep the one already there); returns build.json and whether it was rebuilt."""
    recipe = recipe_for(plan, source, options)
    if manifest.up_to_date(out_dir, recipe):
        return manifest.read(out_dir), False
    runtime = runtimes.get(plan.runtime)
    with layout.staged(out_dir) as staging:
        log("* layout: preprocessing, postprocessing, ensemble" if runtime.takes_token_ids else "* layout: ensemble")
        layout.shared_models(staging, plan, source.checkpoint_dir, options, token_ids=runtime.takes_token_ids)
        log(f"* layout: tensorrt_llm ({plan.runtime} runtime)")
        runtime.lay_out(staging, plan, layout.StepSources(
            checkpoint_dir=source.checkpoint_dir, options=options,
            work_dir=staging.parent / f".{out_dir.name}.engine-work", build=build, job_model=job_model,
            publish_uri=publish_uri, log=log))
        log("* manifest: hashing files")
        document = manifest.build_document(recipe, manifest.file_hashes(staging))
        manifest.write(staging, document)
    return document, True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    doc_head, doc_examples = __doc__.split("\nExamples:\n")
    parser = argparse.ArgumentParser(prog="python build/compile.py", description=doc_head.strip(),
                                     epilog="examples:\n" + doc_examples,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", metavar="TARGET",
                        help=f"target from the GPU catalog: {', '.join(catalog.gpus())}")
    parser.add_argument("--model", help="Hugging Face checkpoint folder or hub id "
                        f"(default: the embedded {model_source.DEFAULT_MODEL})")
    parser.add_argument("--runtime", choices=runtimes.names(),
                        help="what runs the model (default: engine on GPUs, cpu on cpu)")
    parser.add_argument("--precision", help="weights precision; default: the target's fastest "
                        "accuracy-preserving one (docs/gpu-builds.md)")
    parser.add_argument("--tp", type=int, help="tensor parallelism (GPUs per replica); default: the smallest "
                        "whose KV cache reaches 1/3 of the decode ceiling (docs/gpu-builds.md)")
    parser.add_argument("--max-seq-len", type=int, help="prompt + answer tokens per request")
    parser.add_argument("--max-input-len", type=int,
                        help="of those, the most a prompt may take (default: half); e.g. for agents whose tools "
                             "make long prompts and short answers")
    parser.add_argument("--max-batch-size", type=int, help="default: KV tokens / 1024, within the latency bound")
    parser.add_argument("--max-num-tokens", type=int, help="default: max_batch_size + 8192")
    parser.add_argument("--plan", action="store_true", help="print the plan and stop")
    parser.add_argument("--compare", action="store_true",
                        help="plan the model for every catalog GPU and rank them by cost per 1M output tokens")
    parser.add_argument("--json", action="store_true", help="with --plan: print it as JSON")
    parser.add_argument("--no-chat-template", action="store_true",
                        help="send prompts to the model as raw text instead of through its chat template")
    parser.add_argument("--out", type=Path, help="where the repository goes (default: out/<target>)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="model cache (default: .cache)")
    parser.add_argument("--publish", metavar="gs://BUCKET/PREFIX",
                        help="upload the built repository, content-addressed, and print its URI")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    if not args.gpu and not args.compare:
        parser.error("--gpu is required (or --compare)")
    return args


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    if args.compare:
        source = model_source.resolve(args.model, args.cache_dir, log, need_tokenizer=False)
        shape = hf_config.load(source.checkpoint_dir, name=source.name)
        rows = compare.compare(shape, runtime=args.runtime, precision=args.precision, max_seq_len=args.max_seq_len)
        if args.json:
            print(json.dumps([{"gpu": r.gpu, "plan": r.plan.to_dict() if r.plan else None,
                               "estimate": r.estimate.to_dict() if r.estimate else None, "refusal": r.refusal}
                              for r in rows], indent=2))
        else:
            print(compare.format_table(shape, rows))
        return 0
    gpu = catalog.gpu(args.gpu)
    runtime = args.runtime or gpu.runtimes[0]
    source = model_source.resolve(args.model, args.cache_dir, log, need_tokenizer=not args.plan)
    shape = hf_config.load(source.checkpoint_dir, name=source.name)
    log(f"* plan: {shape.name} on {gpu.name} ({runtime} runtime)")
    plan = planner.plan(shape, gpu, runtime=runtime, precision=args.precision, tp=args.tp,
                        max_seq_len=args.max_seq_len, max_input_len=args.max_input_len,
                        max_batch_size=args.max_batch_size, max_num_tokens=args.max_num_tokens)
    sizing = pipeline.size(plan, gpu)
    build = build_memory.needs(shape, gpu, plan) if runtimes.get(runtime).builds_engine else None
    if args.plan:
        est = estimate.estimate(plan, gpu)
        if args.json:
            print(json.dumps({**plan.to_dict(), "estimate": est.to_dict() if est else None,
                              "build": build.to_dict() if build else None,
                              "pipeline": sizing.to_dict() if sizing else None}, indent=2))
        else:
            print(planner.format_table(plan, estimate.table_rows(est) + build_memory.table_rows(build)
                                       + pipeline.table_rows(sizing)))
        return 0
    tokenizer_config = source.checkpoint_dir / "tokenizer_config.json"
    has_chat_template = (source.checkpoint_dir / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text()))
    options = layout.Options(apply_chat_template=has_chat_template and not args.no_chat_template,
                             ensemble_instances=sizing.ensemble_instances if sizing else 1)
    out_dir = (args.out or DEFAULT_OUT / gpu.name).resolve()
    document, rebuilt = build_repository(plan, source, options, out_dir, args.publish,
                                         job_model=args.model or model_source.DEFAULT_HUB_ID, build=build)
    log(f"* {'built' if rebuilt else 'up to date'}: build {document['build_id']} in {time.monotonic() - started:.1f} s")
    if args.publish:
        sys.path.insert(0, str(ROOT / "tools"))
        import publish

        try:
            print(publish.publish(out_dir, args.publish))
        except publish.PublishError as error:
            raise CompileError(f"{error} (the build itself is in {out_dir})") from None
        return 0
    print(out_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except (catalog.UnknownGpuError, planner.PlanError, hf_config.ModelConfigError, model_source.ModelSourceError,
            templating.TemplateError, runtimes.StepError, CompileError) as error:
        if args.debug:
            traceback.print_exc()
        log(f"error: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
