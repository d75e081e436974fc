"""The CRDs tools/validate.py checks against are the upstream files tools/policy/crds/sources.toml names.

No network here: the downloads of tools/update_crds.py are not exercised; what it does with what
it downloads is.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import update_crds
import yaml


def test_every_vendored_crd_is_the_listed_file() -> None:
    assert update_crds.problems() == []


def test_a_hand_edited_crd_is_refused(tmp_path: Path) -> None:
    copy = tmp_path / "crds"
    shutil.copytree(update_crds.CRDS, copy)
    target = copy / "monitoring.googleapis.com/PodMonitoring.yaml"
    target.write_text(target.read_text().replace("type: string", "type: integer", 1))
    (copy / "example.com").mkdir()
    (copy / "example.com/Widget.yaml").write_text("kind: CustomResourceDefinition\n")
    [edited, unlisted] = update_crds.problems(copy)
    assert edited.startswith("monitoring.googleapis.com/PodMonitoring.yaml: sha256 ")
    assert edited.endswith(" sources.toml lists; edit it only through python tools/update_crds.py")
    assert unlisted == "example.com/Widget.yaml: not listed in sources.toml"


def _as_the_catalog_serves_it(node: object) -> object:
    """What datreeio/CRDs-catalog's openapi2jsonschema.py does to a CRD's schema: close every object."""
    if isinstance(node, list):
        return [_as_the_catalog_serves_it(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _as_the_catalog_serves_it(value) for key, value in node.items()}
    if "properties" in node and "additionalProperties" not in node:
        closed["additionalProperties"] = False
    return closed


@pytest.mark.parametrize(
    "source", [s for s in update_crds.load_sources() if s.names], ids=lambda s: s.file
)
def test_update_rebuilds_each_reconstructed_crd_byte_for_byte(source: update_crds.Source) -> None:
    vendored = (update_crds.CRDS / source.file).read_bytes()
    [version] = yaml.safe_load(vendored)["spec"]["versions"]
    catalog_schema = _as_the_catalog_serves_it(version["schema"]["openAPIV3Schema"])
    assert update_crds.reconstructed_crd(source, catalog_schema) == vendored


def test_string_maps_keep_their_additional_properties() -> None:
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    schema = {"type": "object", "properties": {"labels": labels}, "additionalProperties": False}
    assert update_crds.without_catalog_closure(schema) == {"type": "object", "properties": {"labels": labels}}


def test_new_sha256_lands_in_the_right_entry() -> None:
    text = update_crds.SOURCES.read_text()
    updated = update_crds._with_sha256(text, "argoproj.io/Application.yaml", "ab" * 32)
    changed = [(a, b) for a, b in zip(text.splitlines(), updated.splitlines(), strict=True) if a != b]
    assert changed == [(changed[0][0], f'sha256 = "{"ab" * 32}"')]
    entry = text[: text.index(changed[0][0])].rsplit("[[", 1)[1]
    assert 'file = "argoproj.io/Application.yaml"' in entry
