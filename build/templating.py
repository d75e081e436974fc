"""Strict filling of `${name}` templates (Triton config.pbtxt, model.yaml).

NVIDIA's fill_template.py uses `safe_substitute`, so a forgotten key stays in the file as `${key}`
and the backend silently falls back to a default. Here every placeholder must get a value, every
value must have a placeholder, and nothing `${...}`-shaped may survive.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class TemplateError(ValueError):
    """A template and its values disagree."""


def placeholders(template: str) -> set[str]:
    return set(PLACEHOLDER.findall(template))


def _did_you_mean(name: str, candidates: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def render_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fill(template: str, values: Mapping[str, object], *, source: str = "template") -> str:
    wanted = placeholders(template)
    unknown = sorted(set(values) - wanted)
    if unknown:
        name = unknown[0]
        raise TemplateError(f"{source}: no placeholder ${{{name}}}{_did_you_mean(name, wanted)}")
    missing = sorted(wanted - set(values))
    if missing:
        raise TemplateError(f"{source}: no value for {', '.join('${' + m + '}' for m in missing)}")
    filled = PLACEHOLDER.sub(lambda m: render_value(values[m.group(1)]), template)
    leftover = re.search(r"\$\{[^}]*\}?", filled)
    if leftover:
        raise TemplateError(f"{source}: placeholder left after filling: {leftover.group(0)!r}")
    return filled
