"""Lay out a Triton model repository from the templates in model_repository/, filled from the plan:
what every runtime shares. Each runtime lays out its own tensorrt_llm step (build/runtimes/).

The repository is assembled in a staging folder beside the output and swapped in whole, so a failed
or interrupted build never leaves a half-written repository where Triton or publish would read it.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import templating
from build_memory import BuildNeeds
from plan import Plan

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "model_repository"
COMMON_MODULES = sorted((TEMPLATES / "common").glob("*.py"))
# The shared modules are the build's too where it writes what the models read (tokenizer_info).
if str(TEMPLATES / "common") not in sys.path:
    sys.path.append(str(TEMPLATES / "common"))
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "vocab.json", "merges.txt", "generation_config.json")
# Where Triton's pod has the model repository on local disk: gitops/base/deployment.yaml's init
# container copies the published build there.
POD_MODEL_REPOSITORY = "/models"


@dataclass(frozen=True)
class Options:
    apply_chat_template: bool
    # How long tensorrt_llm waits for more requests to join a batch that is about to start.
    max_queue_delay_microseconds: int = 2000
    # 0: the CPU model uses every core its process may run on.
    cpu_threads: int = 0
    # Processes of the ensemble, each with its own event loop: build/pipeline.py sizes it for GPUs.
    ensemble_instances: int = 1


@dataclass(frozen=True)
class StepSources:
    """What a runtime builds its tensorrt_llm step from."""

    checkpoint_dir: Path
    options: Options
    work_dir: Path  # scratch beside the output, for what a runtime builds before laying it out
    build: BuildNeeds | None  # the engine build's own GPU needs, where the runtime builds one
    job_model: str  # the model as a build Job on GKE names it (a hub id)
    publish_uri: str | None
    log: Callable[[str], None]


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


def shared_models(repository: Path, plan: Plan, checkpoint_dir: Path, options: Options, *, token_ids: bool) -> None:
    """preprocessing, postprocessing and the ensemble: the same for every runtime that takes token ids;
    a runtime that takes text (llmapi) gets the ensemble alone."""
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
