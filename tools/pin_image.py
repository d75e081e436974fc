"""Pin a gated image by digest in kustomizations: write its newName and digest into their `images:`.

The image builds (gateway/cloudbuild.yaml, gitops/jobs/compile-engine/cloudbuild.yaml,
security/mirror-cloudbuild.yaml) print the pushed digest once the image gate passed and the digest is
attested; this writes that digest where the manifests take it. In each kustomization directory the
`images:` entry for the image (the one whose newName, else name, ends in the same image name:
`gateway`, `compile-engine`, `tritonserver`) gets `newName` and `digest` and loses any `newTag`; a
directory with no entry gets one, named as kustomize renders the image there (an overlay names the
base's image). Every file is checked before any is written, each is replaced whole (never half
written), and the directories are rendered afterwards: each must run the image by exactly that digest,
else every file is put back. Comments outside the rewritten entry are kept.

Triton's copy (build/versions.toml's [triton] image, copied into Artifact Registry by
security/mirror-cloudbuild.yaml) also gets its digest written as versions.toml's [triton] `digest`, in
the same all-or-nothing step: the validator holds the two equal, and the compile image builds FROM it.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

import validate
import yaml
from policy import images

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build"))  # validate adds it too; said here

import catalog  # noqa: E402

# registry host, path, then @sha256: and 64 hex digits; a tag in front of the digest is refused too,
# since kustomize would keep only one of them.
REFERENCE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9.-]*(?::[0-9]+)?/[a-z0-9._/-]+)@(?P<digest>sha256:[0-9a-f]{64})$")
ITEM = re.compile(r"^(?P<pad>\s*)- ")


class PinError(Exception):
    """The pin cannot be made; the message says why and what to do."""


@dataclass(frozen=True)
class Edit:
    file: Path
    old: str
    new: str


def parse_reference(reference: str) -> tuple[str, str]:
    """(name, digest) of IMAGE@sha256:DIGEST; anything else is refused, naming what is wrong."""
    match = REFERENCE.match(reference)
    if match:
        return match["name"], match["digest"]
    if "@" not in reference:
        raise PinError(
            f"{reference} is not pinned by digest: give IMAGE@sha256:<64 hex digits>, as the build printed it"
        )
    raise PinError(
        f"{reference} is not REGISTRY/PATH@sha256:<64 lowercase hex digits> (no tag): copy the digest the build printed"
    )


def repository(image: str) -> str:
    """An image reference without its tag or digest (a registry's :port stays)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def short_name(image: str) -> str:
    """The image's own name: the last part of its path, without tag or digest."""
    return repository(image).rsplit("/", 1)[-1]


def _kustomization(directory: Path) -> Path:
    found = next((directory / n for n in validate.KUSTOMIZATION_FILES if (directory / n).is_file()), None)
    if found is None:
        raise PinError(f"{directory} has no kustomization.yaml: give a kustomization directory, e.g. overlays/h100")
    return found


def _rendered_images(directory: Path) -> set[str]:
    try:
        objects = validate.render(directory)
    except (validate.RenderError, validate.ToolError) as e:
        raise PinError(f"cannot render {directory}: {e}; fix it first (python tools/validate.py {directory})") from e
    images = set()
    for obj in objects:
        spec = obj.get("spec", {})
        pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            images.add(container.get("image", ""))
    return images


def _entry_index(entries: list[dict], name: str, file: Path) -> int | None:
    matches = [i for i, e in enumerate(entries) if short_name(e.get("newName") or e.get("name", "")) == name]
    if len(matches) > 1:
        raise PinError(f"{file}: {len(matches)} images: entries are for {name}; keep one")
    return matches[0] if matches else None


def _entry_lines(pad: str, name: str, new_name: str, digest: str) -> list[str]:
    return [f"{pad}- name: {name}\n", f"{pad}  newName: {new_name}\n", f"{pad}  digest: {digest}\n"]


def _images_block(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) of the top-level images: block, its key line included."""
    start = next((i for i, line in enumerate(lines) if re.match(r"^images:\s*(#.*)?$", line)), None)
    if start is None:
        return None
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#-"):
        end += 1
    return start, end


def _items(lines: list[str], start: int, end: int) -> list[tuple[int, int, str]]:
    """(first, last + 1, indent) of each list item in lines[start:end], in order."""
    first = next((ITEM.match(lines[i]) for i in range(start, end) if ITEM.match(lines[i])), None)
    if first is None:
        return []
    pad = first["pad"]
    items: list[tuple[int, int, str]] = []
    i = start
    while i < end:
        if lines[i].startswith(f"{pad}- "):
            j = i + 1
            # the item goes on while its lines are indented deeper than its dash
            while j < end and lines[j].strip() and len(lines[j]) - len(lines[j].lstrip()) > len(pad):
                j += 1
            items.append((i, j, pad))
            i = j
        else:
            i += 1
    return items


def rewrite(text: str, index: int | None, entry_name: str, new_name: str, digest: str, file: Path) -> str:
    """The kustomization's text with entry `index` (None: a new one) replaced by name, newName, digest."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    block = _images_block(lines)
    if block is None:
        return "".join([*lines, "images:\n", *_entry_lines("  ", entry_name, new_name, digest)])
    items = _items(lines, *block)
    if not items:
        raise PinError(f"{file}: write images: as a block list (- name: …) so an entry can be added to it")
    if index is None:
        last_end, pad = items[-1][1], items[-1][2]
        return "".join([*lines[:last_end], *_entry_lines(pad, entry_name, new_name, digest), *lines[last_end:]])
    first, end, pad = items[index]
    return "".join([*lines[:first], *_entry_lines(pad, entry_name, new_name, digest), *lines[end:]])


def plan(directory: Path, reference: str) -> Edit:
    """The edit of one directory's kustomization that pins `reference`, checked, not yet written."""
    new_name, digest = parse_reference(reference)
    name = short_name(new_name)
    file = _kustomization(directory)
    old = file.read_text()
    document = yaml.safe_load(old) or {}
    entries = document.get("images") or []
    index = _entry_index(entries, name, file)
    if index is not None:
        entry_name = entries[index]["name"]
    else:
        rendered = {repository(image) for image in _rendered_images(directory) if short_name(image) == name}
        if len(rendered) != 1:
            runs = "no image" if not rendered else f"{len(rendered)} images ({', '.join(sorted(rendered))})"
            raise PinError(f"{directory} runs {runs} named {name}: nothing to pin there")
        entry_name = rendered.pop()
    new = rewrite(old, index, entry_name, new_name, digest, file)
    expected = dict(document)
    expected_entries = [dict(e) for e in entries]
    pinned = {"name": entry_name, "newName": new_name, "digest": digest}
    if index is None:
        expected_entries.append(pinned)
    else:
        expected_entries[index] = pinned
    expected["images"] = expected_entries
    if yaml.safe_load(new) != expected:
        raise PinError(f"{file}: cannot rewrite its images: entry for {name} in place; edit it by hand")
    return Edit(file, old, new)


def _versions_file(directories: list[Path]) -> Path:
    """build/versions.toml of the checkout that holds the directories."""
    found = {
        parent / "build" / "versions.toml"
        for directory in directories
        for parent in [directory.resolve(), *directory.resolve().parents]
        if (parent / "build" / "versions.toml").is_file()
    }
    if len(found) != 1:
        raise PinError(f"pinning Triton writes build/versions.toml too; {len(found)} such files hold "
                       f"{', '.join(map(str, directories))}: pin in one checkout, from its root")
    return found.pop()


def triton_edit(reference: str, directories: list[Path]) -> Edit | None:
    """For the Triton image, the edit of build/versions.toml's [triton] digest; None for any other image."""
    new_name, digest = parse_reference(reference)
    if short_name(new_name) != short_name(catalog.triton_image()):
        return None
    file = _versions_file(directories)
    old = file.read_text()
    upstream = tomllib.loads(old)["triton"]["image"]
    if not images.is_copy(reference, upstream, digest):
        raise PinError(f"{reference} is not {upstream} copied into Artifact Registry: pin the copy "
                       "security/mirror-cloudbuild.yaml made, LOCATION-docker.pkg.dev/PROJECT/REPOSITORY/"
                       f"{images.parse(upstream).path}@sha256:…, as its build printed it")
    table = re.search(r"(?ms)^\[triton\]\n.*?(?=^\[|\Z)", old)
    line = re.compile(r'(?m)^digest = "[^"\n]*"$')
    if table is None or len(line.findall(table[0])) != 1:
        raise PinError(f"{file}: no `digest = \"…\"` line in [triton] to write; restore it from git")
    new = old[:table.start()] + line.sub(f'digest = "{digest}"', table[0]) + old[table.end():]
    expected = tomllib.loads(old)
    expected["triton"]["digest"] = digest
    if tomllib.loads(new) != expected:
        raise PinError(f"{file}: cannot rewrite [triton] digest in place; edit it by hand")
    return Edit(file, old, new)


def write_whole(path: Path, text: str) -> None:
    """Replace path with text in one rename: a reader sees the old file or the new one, never a part."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as f:
            f.write(text)
        os.chmod(temporary, path.stat().st_mode & 0o777)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pin(reference: str, directories: list[Path]) -> list[Edit]:
    """Pin `reference` in every directory; the edits that changed a file. All or nothing."""
    edits = [plan(d, reference) for d in directories]
    versions = triton_edit(reference, directories)
    changed = [e for e in [*edits, *([versions] if versions else [])] if e.new != e.old]
    written: list[Edit] = []
    try:
        for edit in changed:
            write_whole(edit.file, edit.new)
            written.append(edit)
        for directory in directories:
            if reference not in _rendered_images(directory):
                raise PinError(f"{directory} does not render {reference} after the edit; nothing was changed")
    except BaseException:
        for edit in written:
            write_whole(edit.file, edit.old)
        raise
    return changed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pin_image.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/pin_image.py us-docker.pkg.dev/my-project/gke-triton-llm/gateway@sha256:<digest> \\\n"
            "      overlays/*\n"
            "  python tools/pin_image.py us-docker.pkg.dev/my-project/gke-triton-llm/compile-engine@sha256:<d> \\\n"
            "      gitops/jobs/compile-engine\n"
            "  python tools/pin_image.py us-docker.pkg.dev/my-project/nvcr/nvidia/tritonserver@sha256:<d> \\\n"
            "      gitops/base        # and build/versions.toml's [triton] digest\n"
            "\nThen python tools/validate.py, git commit and git push: Argo CD rolls the pods over to the digest."
        ),
    )
    parser.add_argument("image", help="the gated, attested image: REGISTRY/PATH@sha256:DIGEST")
    parser.add_argument("directories", nargs="+", type=Path, help="kustomization directories that run it")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        changed = pin(args.image, args.directories)
    except PinError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not changed:
        print(f"{', '.join(map(str, args.directories))} already pin {args.image}", file=sys.stderr)
        return 0
    for edit in changed:
        print(f"* pinned {args.image} in {edit.file}", file=sys.stderr)
    print(shlex.join(["git", "commit", "-m", f"Pin {short_name(args.image)} {args.image.rsplit('@', 1)[1]}",
                      "--", *(str(e.file) for e in changed)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
