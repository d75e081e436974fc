"""The runtimes: what runs a model's `tensorrt_llm` step. One module each, behind one interface.

  cpu.py     our PyTorch python model with the C++ backend's tensors: laptops, CI, CPU node pools
  engine.py  the C++ TensorRT-LLM backend over an engine built for the target GPU (the default on GPUs)
  llmapi.py  NVIDIA's python llmapi model over the Hugging Face checkpoint (TensorRT-LLM's PyTorch backend)

Each module defines RUNTIME, a Runtime. Adding a runtime is adding a module here; build/gpus.toml
says which targets run it. preprocessing, postprocessing and the ensemble are the same for all of
them (build/layout.py).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import catalog
from hf_config import ModelShape
from layout import StepSources
from plan import Plan


class StepError(RuntimeError):
    """A runtime's tensorrt_llm step that cannot be built here; the message says what to do instead."""


@dataclass(frozen=True)
class Runtime:
    name: str
    # What the plan needs from it: a refusal for a model or precision it cannot serve, or None.
    model_problem: Callable[[ModelShape, catalog.Gpu], str | None]
    precision_problem: Callable[[ModelShape, str], str | None]
    # How its tensorrt_llm step is built and laid out.
    uses_tensorrt_llm: bool  # build.json records the TensorRT-LLM and TensorRT versions
    builds_engine: bool  # the build needs GPUs of its own (build/build_memory.py)
    takes_token_ids: bool  # preprocessing and postprocessing sit in front of it; else it takes text
    lay_out: Callable[[Path, Plan, StepSources], None]  # writes <repository>/tensorrt_llm
    # What its pod needs: the queue gauge the HPA scales on, exported from model load on; None where
    # the runtime has none, and queue_metric_missing says why.
    queue_metric: str | None
    queue_metric_missing: str = ""


def names() -> tuple[str, ...]:
    return tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)))


def get(name: str) -> Runtime:
    if name not in names():
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").RUNTIME
