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
class Capabilities:
    """What a runtime's tensorrt_llm step enforces and returns beyond plain text, so that the gateway
    refuses by name what a runtime cannot do instead of accepting and ignoring it. build.json records
    it (`capabilities`); the tensors are the C++ backend's, named in the comments."""

    # guided_decoding_guide_type values it enforces (with guided_decoding_guide): tokenizer_info.GUIDE_TYPES
    guide_types: tuple[str, ...] = ()
    log_probs: bool = False  # return_log_probs: output_log_probs and cum_log_probs
    top_log_probs: int = 0  # the most num_top_log_probs (top_log_probs, top_log_prob_ids; a CPU-runtime extension)
    return_sequences: bool = False  # num_return_sequences > 1 (each sequence its own row, up to max_batch_size)
    missing: str = ""  # why it lacks what it lacks, for the gateway's refusal


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
    # What its tensorrt_llm step enforces and returns beyond text (structured output, logprobs, n).
    capabilities: Capabilities = Capabilities()


def write_tokenizer_info(tokenizer_dir: Path, version_dir: Path) -> Path:
    """The xgrammar tokenizer info file that guided decoding reads, beside the step's model."""
    import tokenizer_info  # model_repository/common, on the path from build/layout.py

    try:
        return tokenizer_info.write(tokenizer_dir, version_dir / tokenizer_info.FILE_NAME)
    except tokenizer_info.TokenizerInfoError as error:
        raise StepError(str(error)) from None


def names() -> tuple[str, ...]:
    return tuple(sorted(module.name for module in pkgutil.iter_modules(__path__)))


def get(name: str) -> Runtime:
    if name not in names():
        raise ValueError(f"unknown runtime {name!r}; known: {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").RUNTIME
