"""The upstream facts the control plane rests on (simulator/facts.toml), read once."""

from __future__ import annotations

import tomllib
from functools import cache
from pathlib import Path

FACTS_FILE = Path(__file__).resolve().parent / "facts.toml"


@cache
def facts() -> dict:
    return tomllib.loads(FACTS_FILE.read_text())


def value(*keys: str):
    """The `value` of the fact at `keys` (e.g. value("hpa", "tolerance"))."""
    table = facts()
    for key in keys:
        table = table[key]
    return table["value"]
