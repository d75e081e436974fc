"""The xgrammar tokenizer info file: what grammar-constrained decoding needs to know about the tokenizer.

The build writes it (build/runtimes/cpu.py and engine.py) in the format of TensorRT-LLM's
examples/generate_xgrammar_tokenizer_info.py: the vocabulary in id order, the fast tokenizer's JSON
and the end-of-sequence id. TensorRT-LLM's C++ backend reads it from `xgrammar_tokenizer_info_path`
and builds xgrammar's TokenizerInfo from it (build/tensorrtllm_backend.toml, [guided_decoding]); the
CPU runtime reads it the same way, with `read` below. The build reads it back and checks that xgrammar
sees the tokenizer the same way as from the Hugging Face tokenizer itself.

Copied beside every python model at layout time; transformers and xgrammar are imported only where
used (the CPU runtime and the build have them, the ensemble's stub does not).
"""

from __future__ import annotations

import json
from pathlib import Path

FILE_NAME = "xgrammar_tokenizer_info.json"
# The guided_decoding_guide_type values TensorRT-LLM's C++ backend maps to a guide at the pinned version
# (build/tensorrtllm_backend.toml [guided_decoding]); the CPU runtime takes the same.
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar")


class TokenizerInfoError(ValueError):
    """The tokenizer cannot be described to xgrammar; the message says why."""


def document(tokenizer, where: Path) -> dict:
    """The file's content, as TensorRT-LLM's _xgrammar_tokenizer_info makes it from a fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast) or tokenizer.eos_token_id is None:
        # TensorRT-LLM's C++ backend reads tokenizer_str and stop_token_ids unconditionally.
        raise TokenizerInfoError(f"{where}: guided decoding needs a fast tokenizer (tokenizer.json) "
                                 "with an end-of-sequence token")
    vocabulary = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return {
        "encoded_vocab": [token for token, _ in vocabulary],
        "tokenizer_str": tokenizer.backend_tokenizer.to_str(),
        "stop_token_ids": [tokenizer.eos_token_id],
    }


def read(path: Path, vocab_size: int):
    """xgrammar's TokenizerInfo from the file, built as TensorRT-LLM's GuidedDecoder builds it: the
    vocabulary type and prefix space detected from tokenizer_str, `vocab_size` the model's logits."""
    import xgrammar

    info = json.loads(Path(path).read_text())
    if len(info["encoded_vocab"]) > vocab_size:
        raise TokenizerInfoError(f"{path}: the tokenizer has {len(info['encoded_vocab'])} tokens, more than the "
                                 f"model's {vocab_size} logits")
    # Python's counterpart of the C++ TokenizerInfo::DetectMetadataFromHF that the GuidedDecoder calls.
    metadata = xgrammar.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])
    return xgrammar.TokenizerInfo(info["encoded_vocab"], metadata["vocab_type"], vocab_size=vocab_size,
                                  stop_token_ids=info["stop_token_ids"],
                                  add_prefix_space=metadata["add_prefix_space"])


def write(tokenizer_dir: Path, target: Path) -> Path:
    """Write the file for the tokenizer in `tokenizer_dir`, then check it against xgrammar's own reading."""
    import xgrammar
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    content = document(tokenizer, tokenizer_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(content))
    own = xgrammar.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=content["stop_token_ids"])
    ours = read(target, own.vocab_size)
    if json.loads(ours.dump_metadata()) != json.loads(own.dump_metadata()):
        raise TokenizerInfoError(f"{target}: xgrammar reads the file as {ours.dump_metadata()} but the tokenizer "
                                 f"as {own.dump_metadata()}")
    return target
