"""What the gateway needs to know about the built model repository it fronts.

Read once at start from the files the build laid out (build.json, the config.pbtxt parameters, the
tokenizer and generation_config.json beside the ensemble), so the gateway applies the same limits,
end ids and chat template as the Triton models themselves, and the model's recommended sampling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# model_repository/common, on the path from gateway/__init__.py
from end_ids import end_ids
from google.protobuf import text_format
from tokenizers import Tokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from tritonclient.grpc import model_config_pb2


class RepositoryError(RuntimeError):
    """The folder is not a built model repository the gateway can front."""


@dataclass(frozen=True)
class Model:
    name: str  # the id clients send as `model` (build.json's model name)
    created: int  # build.json's modification time, as OpenAI's `created`
    tokenizer: PreTrainedTokenizerBase  # chat template and prompt encoding
    fast: Tokenizer  # the tokenizers object StreamedText decodes with
    skip_special_tokens: bool
    max_input_len: int
    max_output_len: int
    max_seq_len: int  # prompt and answer together: the context length /v1/models reports
    max_batch_size: int  # the engine's rows: what sizes the gateway's default bound on requests in flight
    max_token_chars: int  # the longest token's characters: a prompt longer than max_input_len of them is too long
    end_ids: tuple[int, ...]  # the tokenizer's own first: tensorrt_llm takes one end_id
    pad_id: int
    token_ids: bool  # tensorrt_llm takes token ids (cpu, engine); else text (llmapi, through the ensemble)
    ensemble_templates: bool  # the ensemble applies the chat template itself (preprocessing)
    generation_config: dict  # generation_config.json as the build copied it beside the tokenizer; {} if none
    # What the build's tensorrt_llm enforces and returns beyond text (build.json, from build/runtimes):
    # guide_types, log_probs, top_log_probs, return_sequences, and `missing`, why it lacks the rest.
    capabilities: dict


def parameters(config: Path) -> dict[str, str]:
    parsed = text_format.Parse(config.read_text(), model_config_pb2.ModelConfig())
    return {key: value.string_value for key, value in parsed.parameters.items()}


def longest_token(fast: Tokenizer) -> int:
    """Characters of the vocabulary's longest entry, added tokens included. A byte-level vocabulary
    writes each byte as one character and sentencepiece each character as itself (or a longer
    <0x..> for a fallback byte), so no token stands for more characters of a prompt than this."""
    return max(len(entry) for entry in fast.get_vocab(with_added_tokens=True))


def load(repository: Path, served_name: str | None = None) -> Model:
    repository = Path(repository)
    manifest, ensemble = repository / "build.json", repository / "ensemble" / "config.pbtxt"
    if not manifest.is_file() or not ensemble.is_file():
        raise RepositoryError(f"{repository} is not a built model repository (needs build.json and ensemble/); "
                              "run `python build/compile.py --gpu cpu` first")
    build = json.loads(manifest.read_text())
    ensemble_params = parameters(ensemble)
    tokenizer_dir = repository / "ensemble" / "1" / ensemble_params["tokenizer_dir"]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    preprocessing = repository / "preprocessing" / "config.pbtxt"
    templates = preprocessing.is_file() and parameters(preprocessing)["apply_chat_template"] == "true"
    try:
        ends = tuple(end_ids(tokenizer_dir, tokenizer.eos_token_id))
    except ValueError as error:
        raise RepositoryError(str(error)) from None
    generation_config = tokenizer_dir / "generation_config.json"
    fast = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return Model(
        name=served_name or build["model"]["name"],
        created=int(manifest.stat().st_mtime),
        tokenizer=tokenizer,
        fast=fast,
        skip_special_tokens=ensemble_params["skip_special_tokens"] == "true",
        max_input_len=int(build["limits"]["max_input_len"]),
        max_output_len=int(build["limits"]["max_output_len"]),
        max_seq_len=int(build["limits"]["max_seq_len"]),
        max_batch_size=int(build["limits"]["max_batch_size"]),
        max_token_chars=longest_token(fast),
        end_ids=ends,
        pad_id=ends[0] if tokenizer.pad_token_id is None else int(tokenizer.pad_token_id),
        token_ids=ensemble_params["tensorrt_llm_inputs"] == "token_ids",
        ensemble_templates=templates,
        generation_config=json.loads(generation_config.read_text()) if generation_config.is_file() else {},
        capabilities=build.get("capabilities", {}),
    )
