"""build.json: what was built, from what, for which target, and the hash of every file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

FORMAT = 1
MANIFEST = "build.json"


def feed_file(digest, path: Path) -> None:
    """Add a file's bytes to a running hash, a few MiB at a time (weights are GBs)."""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    feed_file(digest, path)
    return digest.hexdigest()


def file_hashes(repository: Path) -> dict[str, dict[str, object]]:
    return {
        path.relative_to(repository).as_posix(): {"sha256": file_sha256(path), "size": path.stat().st_size}
        for path in sorted(repository.rglob("*"))
        if path.is_file() and path.name != MANIFEST and "__pycache__" not in path.parts
    }


def canonical_sha256(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def build_document(recipe: dict, files: dict) -> dict:
    """The manifest: the recipe, the files, and a build id over both."""
    document = {"format": FORMAT, **recipe, "recipe_sha256": canonical_sha256(recipe), "files": files}
    document["build_id"] = canonical_sha256(document)[:16]
    return document


def write(repository: Path, document: dict) -> Path:
    path = repository / MANIFEST
    staging = path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    os.replace(staging, path)
    return path


def read(repository: Path) -> dict:
    return json.loads((repository / MANIFEST).read_text())


def up_to_date(repository: Path, recipe: dict) -> bool:
    """Same recipe and every recorded file present at its recorded size: nothing to rebuild."""
    try:
        document = read(repository)
    except (OSError, json.JSONDecodeError):
        return False
    if document.get("recipe_sha256") != canonical_sha256(recipe):
        return False
    return all((repository / name).is_file() and (repository / name).stat().st_size == entry["size"]
               for name, entry in document["files"].items())
