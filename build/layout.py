"""Lay out a Triton model repository from the templates in model_repository/, filled from the plan.

The repository is assembled in a staging folder beside the output and swapped in whole, so a failed
or interrupted build never leaves a half-written repository where Triton or publish would read it.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import templating
from planner import Plan

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "model_repository"
COMMON_MODULES = sorted((TEMPLATES / "common").glob("*.py"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")


@dataclass(frozen=True)
class Options:
    apply_chat_template: bool
    # How long tensorrt_llm waits for more requests to join a batch that is about to start.
    max_queue_delay_microseconds: int = 2000
    # 0: the CPU model uses every core its process may run on.
    cpu_threads: int = 0
    # Processes of the ensemble, each with its own event loop: build/pipeline.py sizes it for GPUs.
    ensemble_instances: int = 1


def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link big immutable files (weights) from the cache; copy where links cannot go."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def fill_config(template_dir: Path, target_dir: Path, values: dict[str, object]) -> None:
    template = template_dir / "config.pbtxt"
    target_dir.mkdir(parents=True, exist_ok=True)
    (target_dir / "config.pbtxt").write_text(
        templating.fill(template.read_text(), values, source=str(template.relative_to(ROOT))))


def python_model(template_dir: Path, target_dir: Path, values: dict[str, object]) -> Path:
    """config.pbtxt filled, model code and the shared helper copied; returns the version folder."""
    fill_config(template_dir, target_dir, values)
    version_dir = target_dir / "1"
    shutil.copytree(template_dir / "1", version_dir, ignore=shutil.ignore_patterns("__pycache__"))
    for module in COMMON_MODULES:
        shutil.copy2(module, version_dir / module.name)
    return version_dir


def copy_tokenizer(checkpoint_dir: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (checkpoint_dir / name).is_file():
            shutil.copy2(checkpoint_dir / name, target / name)


def shared_models(repository: Path, plan: Plan, checkpoint_dir: Path, options: Options) -> None:
    """preprocessing, postprocessing and the ensemble: the same for every runtime that takes token ids;
    the llmapi model takes text, so there the ensemble stands alone."""
    token_ids = plan.runtime != "llmapi"
    models = {
        "preprocessing": {
            "max_batch_size": plan.max_batch_size, "max_input_len": plan.max_input_len,
            "max_output_len": plan.max_output_len, "preprocessing_instances": 1,
            "apply_chat_template": options.apply_chat_template,
            # a chat template writes its own special tokens
            "add_special_tokens": not options.apply_chat_template,
        },
        "postprocessing": {"max_batch_size": plan.max_batch_size, "skip_special_tokens": True,
                           "postprocessing_instances": 1},
        "ensemble": {"max_batch_size": plan.max_batch_size, "skip_special_tokens": True,
                     # Twice what one batch holds, over all instances: tensorrt_llm always has the next
                     # batch waiting (so its queue gauge shows load), and the rest wait in Triton's queue.
                     "max_concurrent_requests": math.ceil(2 * plan.max_batch_size / options.ensemble_instances),
                     "ensemble_instances": options.ensemble_instances,
                     "tensorrt_llm_inputs": "token_ids" if token_ids else "text"},
    }
    for name, values in models.items():
        if not token_ids and name != "ensemble":
            continue
        version_dir = python_model(TEMPLATES / name, repository / name, values)
        copy_tokenizer(checkpoint_dir, version_dir / "tokenizer")


def cpu_tensorrt_llm(repository: Path, plan: Plan, checkpoint_dir: Path, options: Options) -> None:
    version_dir = python_model(TEMPLATES / "tensorrt_llm" / "cpu", repository / "tensorrt_llm", {
        "max_batch_size": plan.max_batch_size, "max_input_len": plan.max_input_len,
        "max_output_len": plan.max_output_len, "cpu_threads": options.cpu_threads,
        "max_queue_delay_microseconds": options.max_queue_delay_microseconds,
    })
    checkpoint = version_dir / "checkpoint"
    checkpoint.mkdir()
    for path in sorted(checkpoint_dir.iterdir()):
        if path.suffix == ".safetensors" or path.name in ("config.json", "generation_config.json"):
            link_or_copy(path, checkpoint / path.name)


def llmapi_tensorrt_llm(repository: Path, plan: Plan, checkpoint_dir: Path) -> None:
    """NVIDIA's llmapi model (wrapped for text deltas), its model.yaml, and the checkpoint it loads."""
    import llmapi

    version_dir = repository / "tensorrt_llm" / "1"
    version_dir.mkdir(parents=True)
    (repository / "tensorrt_llm" / "config.pbtxt").write_text(llmapi.render_config(plan))
    (version_dir / "model.yaml").write_text(llmapi.render_model_yaml(plan))
    shutil.copy2(llmapi.MODEL_PY, version_dir / "model.py")
    for path in sorted(checkpoint_dir.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            link_or_copy(path, repository / llmapi.CHECKPOINT_SUBDIR / path.name)


def template_files() -> Iterator[Path]:
    """Every template file: part of the recipe, so editing one triggers a rebuild."""
    return (p for p in sorted(TEMPLATES.rglob("*")) if p.is_file() and "__pycache__" not in p.parts)


@contextmanager
def staged(out_dir: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces out_dir whole, on failure it is removed."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.staging-"))
    staging.chmod(0o755)  # mkdtemp makes it private; the repository is meant to be read by others
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    retired = out_dir.with_name(f".{out_dir.name}.retired")
    shutil.rmtree(retired, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(retired)
    staging.rename(out_dir)
    shutil.rmtree(retired, ignore_errors=True)


def engine_tensorrt_llm(repository: Path, plan: Plan, engine_dir: Path) -> None:
    """The C++ tensorrtllm backend over the engine, which lives in the repository (local disk in the pod)."""
    import engine

    target = repository / "tensorrt_llm"
    target.mkdir(parents=True)
    (target / "config.pbtxt").write_text(engine.render_config(plan))
    engine_target = repository / engine.ENGINE_SUBDIR
    engine_target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(engine_dir, engine_target, copy_function=lambda src, dst: link_or_copy(Path(src), Path(dst)))
