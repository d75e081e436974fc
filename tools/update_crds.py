"""Download the CustomResourceDefinitions in tools/policy/crds again, from the commits crds/sources.toml pins.

tools/validate.py checks custom resources (Argo CD, Config Connector, GKE's own kinds) against the
files in tools/policy/crds. To move one to a newer release, change its `commit` (and `tag`) in
sources.toml and run this: it fetches every file from raw.githubusercontent.com, rebuilds the
reconstructed ones, and rewrites the files and their sha256s only once every download succeeded.
`--check` needs no network: it tells whether the files are still the ones sources.toml lists.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

CRDS = Path(__file__).resolve().parent / "policy" / "crds"
SOURCES = CRDS / "sources.toml"
RAW = "https://raw.githubusercontent.com/{repository}/{commit}/{path}"


@dataclass(frozen=True)
class Source:
    file: str
    repository: str
    commit: str
    path: str
    sha256: str
    # Only for reconstructed kinds: what no upstream CRD file states, written by hand in sources.toml.
    names: dict | None = None

    @property
    def url(self) -> str:
        return RAW.format(repository=self.repository, commit=self.commit, path=self.path)


def load_sources(path: Path = SOURCES) -> list[Source]:
    data = tomllib.loads(path.read_text())
    sources = [
        Source(e["file"], e["repository"], e["commit"], e["path"], e["sha256"]) for e in data.get("verbatim", [])
    ]
    for e in data.get("reconstructed", []):
        names = {key: e[key] for key in ("group", "version", "kind", "plural", "short_names", "scope")}
        sources.append(Source(e["file"], e["repository"], e["commit"], e["path"], e["sha256"], names))
    return sources


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def without_catalog_closure(node: object) -> object:
    """Undo the catalog's openapi2jsonschema.py: drop the `additionalProperties: false` it puts beside
    every `properties` (a CRD may not hold both); non-false additionalProperties are the CRD's own."""
    if isinstance(node, list):
        return [without_catalog_closure(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: without_catalog_closure(value)
        for key, value in node.items()
        if not (key == "additionalProperties" and value is False and "properties" in node)
    }


def reconstructed_crd(source: Source, catalog_schema: dict) -> bytes:
    """A CustomResourceDefinition for a kind GKE installs itself, from the catalog's JSON Schema."""
    names = source.names or {}
    kind, plural = names["kind"], names["plural"]
    crd_names = {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower()}
    if names["short_names"]:
        crd_names["shortNames"] = names["short_names"]
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{names['group']}"},
        "spec": {
            "group": names["group"],
            "names": crd_names,
            "scope": names["scope"],
            "versions": [
                {
                    "name": names["version"],
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": without_catalog_closure(catalog_schema)},
                }
            ],
        },
    }
    header = (
        f"# RECONSTRUCTED by tools/update_crds.py: Google publishes no CRD YAML for {kind}.\n"
        f"# openAPIV3Schema: {source.repository} {source.path} at {source.commit}, without the\n"
        "# `additionalProperties: false` its converter adds beside `properties`; names and scope from\n"
        "# tools/policy/crds/sources.toml.\n"
    )
    return (header + yaml.safe_dump(crd, sort_keys=False, width=120)).encode()


def problems(directory: Path = CRDS, sources: list[Source] | None = None) -> list[str]:
    """Offline: every listed file present with its sha256, and no file that sources.toml does not list."""
    sources = load_sources() if sources is None else sources
    found = []
    for source in sources:
        path = directory / source.file
        if not path.is_file():
            found.append(f"{source.file}: listed in sources.toml but missing; run python tools/update_crds.py")
        elif sha256(path.read_bytes()) != source.sha256:
            found.append(
                f"{source.file}: sha256 {sha256(path.read_bytes())} is not the {source.sha256} sources.toml "
                "lists; edit it only through python tools/update_crds.py"
            )
    listed = {source.file for source in sources}
    for path in sorted(directory.rglob("*.yaml")):
        if path.relative_to(directory).as_posix() not in listed:
            found.append(f"{path.relative_to(directory).as_posix()}: not listed in sources.toml")
    return found


def download(source: Source) -> bytes:
    response = requests.get(source.url, timeout=60)
    if response.status_code != 200:
        raise RuntimeError(f"{source.url}: HTTP {response.status_code}; check repository, commit and path")
    if source.names is None:
        return response.content
    return reconstructed_crd(source, json.loads(response.content))


def _with_sha256(text: str, file: str, digest: str) -> str:
    block = re.compile(rf'(file = "{re.escape(file)}"\n(?:[^\[\n][^\n]*\n)*?sha256 = )"[0-9a-f]*"')
    return block.sub(lambda m: f'{m.group(1)}"{digest}"', text, count=1)


def update(directory: Path = CRDS, sources_path: Path = SOURCES) -> None:
    sources = load_sources(sources_path)
    fetched = {}
    for number, source in enumerate(sources, 1):
        print(f"[{number}/{len(sources)}] {source.url}", flush=True)
        fetched[source.file] = download(source)
    text = sources_path.read_text()
    for source in sources:
        path = directory / source.file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_bytes(fetched[source.file])
        partial.replace(path)
        text = _with_sha256(text, source.file, sha256(fetched[source.file]))
    sources_path.write_text(text)
    print(f"wrote {len(sources)} CRDs to {directory}; review with git diff, then python tools/validate.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/update_crds.py           # download again from the pinned commits\n"
            "  python tools/update_crds.py --check   # offline: are the files the ones listed?\n"
            "To move to a newer release: edit commit and tag in tools/policy/crds/sources.toml, run it, then\n"
            "python tools/validate.py."
        ),
    )
    parser.add_argument("--check", action="store_true", help="verify files against sources.toml, no network")
    args = parser.parse_args(argv)
    if args.check:
        found = problems()
        for problem in found:
            print(f"❌ {problem}")
        print(f"{len(load_sources())} CRDs listed, {len(found)} problems")
        return 1 if found else 0
    try:
        update()
    except (requests.RequestException, RuntimeError, ValueError) as error:
        print(f"error: {error}; nothing was changed", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
