"""Shared by our python models (copied beside each model.py at layout time).

Parameters come from config.pbtxt, filled from the plan by build/layout.py. A missing or malformed
parameter is an error at load time, never a silent default.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer


def _as_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


PARSERS: dict[type, Callable[[str], object]] = {int: int, float: float, str: str, bool: _as_bool}


def parameter(model_config: dict, name: str, kind: type):
    parameters = model_config.get("parameters", {})
    if name not in parameters:
        raise ValueError(f"model {model_config.get('name')!r}: parameter {name!r} is missing from config.pbtxt")
    text = parameters[name]["string_value"]
    try:
        return PARSERS[kind](text)
    except ValueError as error:
        raise ValueError(f"model {model_config.get('name')!r}: parameter {name!r}={text!r}: {error}") from None


def load_config(args: dict) -> tuple[dict, Path]:
    """The model's config and its version directory (where the build put its files)."""
    config = json.loads(args["model_config"])
    version_dir = Path(args["model_repository"]) / args["model_version"]
    return config, version_dir


def load_tokenizer(model_config: dict, version_dir: Path) -> Tokenizer:
    """The fast tokenizer the build put beside the model (parameter tokenizer_dir)."""
    return Tokenizer.from_file(str(version_dir / parameter(model_config, "tokenizer_dir", str) / "tokenizer.json"))
