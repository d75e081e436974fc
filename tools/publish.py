"""Publish a built Triton model repository to GCS at a content-addressed, immutable path.

The destination is gs://BUCKET/PREFIX/<model name>/<build_id>/, both read from the repository's
build.json. Every file is checked against the sha256 and size that build.json records before anything
is uploaded, objects are created only if absent (generation precondition 0), and build.json goes up
last, so a reader who sees build.json sees a complete build. An object that is already there with the
same content is kept as is; one with different content stops the publish.

Against the GCS emulator set STORAGE_EMULATOR_HOST (see tests/support/gcs_emulator.py); otherwise the
application default credentials are used (`gcloud auth application-default login`, or Workload Identity).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "build"))

import manifest  # noqa: E402

BUILD_JSON = manifest.MANIFEST
# The emulator accepts any project; a real client takes it from the default credentials.
EMULATOR_PROJECT = "emulator"
# Model names and build ids become path segments of the object names.
SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
BUILD_ID = re.compile(r"[0-9a-f]{16}")
# CPython writes __pycache__ next to a python-backend model.py when a local Triton has served the
# repository; it is derived from files that are hashed, so it is neither checked nor uploaded.
DERIVED_DIRS = {"__pycache__"}
READ_CHUNK = 1 << 20

# progress(done, total, message): called once per file, after it was uploaded or kept.
Progress = Callable[[int, int, str], None]


class PublishError(Exception):
    """The repository or the destination is not fit to publish; the message says what to do."""


@dataclass(frozen=True)
class GcsPath:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    def object_name(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def uri(self, *parts: str) -> str:
        return f"gs://{self.bucket}/{self.object_name(*parts)}"


def parse_gcs_uri(uri: str) -> GcsPath:
    if not uri.startswith("gs://"):
        raise PublishError(f"destination {uri!r} is not a gs:// URI; pass gs://BUCKET/PREFIX")
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    if not bucket:
        raise PublishError(f"destination {uri!r} has no bucket; pass gs://BUCKET/PREFIX")
    return GcsPath(bucket=bucket, prefix=prefix.strip("/"))


def make_client() -> storage.Client:
    """A storage client for the emulator when STORAGE_EMULATOR_HOST is set, else for real GCS."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(credentials=AnonymousCredentials(), project=EMULATOR_PROJECT)
    try:
        return storage.Client()
    except DefaultCredentialsError as e:
        raise PublishError(
            f"no Google Cloud credentials ({e}); run: gcloud auth application-default login "
            "(or set STORAGE_EMULATOR_HOST to use the GCS emulator, see tests/support/gcs_emulator.py)"
        ) from e


def _repository_files(repo_dir: Path) -> list[Path]:
    return [
        path
        for path in repo_dir.rglob("*")
        if path.is_file()
        and path != repo_dir / BUILD_JSON
        and not DERIVED_DIRS.intersection(path.relative_to(repo_dir).parts)
    ]


def load_build(repo_dir: Path) -> dict:
    build_file = repo_dir / BUILD_JSON
    if not build_file.is_file():
        raise PublishError(
            f"{build_file} does not exist; publish a directory written by build/compile.py --out DIR"
        )
    try:
        build = json.loads(build_file.read_text())
    except json.JSONDecodeError as e:
        raise PublishError(f"{build_file} is not valid JSON ({e}); rebuild with build/compile.py") from e
    model = build.get("model", {}).get("name", "")
    build_id = build.get("build_id", "")
    if not SEGMENT.fullmatch(model):
        raise PublishError(f"{build_file}: model name {model!r} cannot be a path segment; rebuild it")
    if not BUILD_ID.fullmatch(build_id):
        raise PublishError(f"{build_file}: build_id {build_id!r} is not 16 hex digits; rebuild it")
    if not isinstance(build.get("files"), dict) or not build["files"]:
        raise PublishError(f"{build_file} lists no files; rebuild with build/compile.py")
    # The build id is the object path: it must be the hash of this content, or two different
    # builds could claim one path.
    content_id = manifest.canonical_sha256({k: v for k, v in build.items() if k != "build_id"})[:16]
    if content_id != build_id:
        raise PublishError(
            f"{build_file}: build_id {build_id} is not the hash of its content ({content_id}); "
            "build.json was edited after the build, rebuild it"
        )
    return build


def verify_repository(repo_dir: Path, build: dict) -> None:
    """Refuse a repository whose files differ from what build.json records (tampered or half-written)."""
    listed = build["files"]
    for rel, expected in listed.items():
        path = repo_dir / rel
        if not path.is_file():
            raise PublishError(
                f"{path} is listed in build.json but missing; the build is incomplete, rebuild it"
            )
        size = path.stat().st_size
        if size != expected["size"]:
            raise PublishError(
                f"{path} has {size} bytes, build.json records {expected['size']}; "
                "the repository changed after it was built, rebuild it"
            )
        if manifest.file_sha256(path) != expected["sha256"]:
            raise PublishError(
                f"{path} does not match its sha256 in build.json; "
                "the repository changed after it was built, rebuild it"
            )
    present = (path.relative_to(repo_dir).as_posix() for path in _repository_files(repo_dir))
    unlisted = sorted(rel for rel in present if rel not in listed)
    if unlisted:
        raise PublishError(
            f"{repo_dir / unlisted[0]} is not listed in build.json ({len(unlisted)} such files); "
            "remove it or rebuild"
        )


def _local_checksums(path: Path) -> tuple[str, str]:
    """md5 and crc32c of a file, base64 as GCS reports them."""
    md5 = hashlib.md5(usedforsecurity=False)
    crc = google_crc32c.Checksum()
    with path.open("rb") as f:
        while chunk := f.read(READ_CHUNK):
            md5.update(chunk)
            crc.update(chunk)
    return base64.b64encode(md5.digest()).decode(), base64.b64encode(crc.digest()).decode()


def _same_content(blob: storage.Blob, path: Path) -> bool:
    md5, crc32c = _local_checksums(path)
    # Composite objects carry no md5; every object carries a crc32c.
    if blob.md5_hash:
        return blob.md5_hash == md5
    return blob.crc32c == crc32c


def _put(bucket: storage.Bucket, name: str, path: Path) -> bool:
    """Create object `name` from `path` unless it exists; True if uploaded, False if already there."""
    uri = f"gs://{bucket.name}/{name}"
    existing = bucket.get_blob(name)
    if existing is None:
        try:
            bucket.blob(name).upload_from_filename(str(path), if_generation_match=0)
            return True
        except gexc.PreconditionFailed:
            # Another publisher created it between our look and our write: judge its content instead.
            existing = bucket.get_blob(name)
    if existing is None or not _same_content(existing, path):
        raise PublishError(
            f"{uri} already exists with different content than {path}; published builds are immutable. "
            "Find out who wrote it (gcloud storage objects describe) before deleting anything"
        )
    return False


def publish(
    repo_dir: Path | str,
    dest_uri: str,
    client: storage.Client | None = None,
    progress: Progress | None = None,
) -> str:
    """Upload repo_dir to DEST/<model>/<build_id>/ and return that URI (with a trailing slash).

    Without a client, one is made (make_client) once the repository has passed its checks."""
    repo_dir = Path(repo_dir)
    dest = parse_gcs_uri(dest_uri)
    build = load_build(repo_dir)
    verify_repository(repo_dir, build)
    model, build_id = build["model"]["name"], build["build_id"]
    bucket = (client or make_client()).bucket(dest.bucket)
    order = [*sorted(build["files"]), BUILD_JSON]
    try:
        for done, rel in enumerate(order, start=1):
            uploaded = _put(bucket, dest.object_name(model, build_id, rel), repo_dir / rel)
            if progress:
                progress(done, len(order), f"> {rel}" if uploaded else f"= {rel} (identical)")
    except gexc.NotFound as e:
        raise PublishError(
            f"bucket gs://{dest.bucket} does not exist; create it: gcloud storage buckets create gs://{dest.bucket}"
        ) from e
    except gexc.Forbidden as e:
        raise PublishError(
            f"no permission to write gs://{dest.bucket} ({e.message}); "
            "grant roles/storage.objectCreator and roles/storage.objectViewer to your identity"
        ) from e
    return dest.uri(model, build_id) + "/"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="publish.py",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python tools/publish.py out/cpu gs://my-models/triton\n"
            "  STORAGE_EMULATOR_HOST=http://127.0.0.1:4443 python tools/publish.py out/cpu gs://test/triton\n"
            "\nThe final URI goes to stdout; pin it with tools/pin.py."
        ),
    )
    parser.add_argument("repo_dir", type=Path, help="a repository from build/compile.py, with build.json")
    parser.add_argument("dest", metavar="gs://BUCKET/PREFIX", help="builds root; <model>/<build_id>/ follows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True, soft_wrap=True)
    console.print(f"* publish {args.repo_dir} to {args.dest}", highlight=False)
    # The bar is for people at a terminal; logs and pipes get the per-file lines only.
    columns = (TextColumn("  upload"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("upload", total=None)

        def report(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=total)
            bar.console.print(f"  {message}", highlight=False, markup=False)

        try:
            uri = publish(args.repo_dir, args.dest, progress=report)
        except PublishError as e:
            bar.stop()
            console.print(f"error: {e}", highlight=False, markup=False)
            return 1
    print(uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
