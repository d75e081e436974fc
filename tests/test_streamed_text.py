"""Streamed detokenization against both tokenizer families: byte-level BPE and SentencePiece-style.

Decoding each streamed token on its own, as NVIDIA's stock postprocessing does, loses SentencePiece
spaces and splits multi-byte characters into U+FFFD; each case first shows that naive decoding is
wrong for its text, so the test means something, then that the streamed pieces are exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamed_text import StreamedText
from tokenizers import Tokenizer, decoders, models, normalizers, trainers

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [
    "hello 東京 café 🎉 the  lazy  fox",
    "写一首关于春天的短诗。\n春风 🌸 吹",
    "  leading spaces, trailing space ",
]


def sentencepiece_style() -> Tokenizer:
    """A small Llama-style tokenizer: "▁" for spaces, <0xXX> byte fallback, Llama's decoder chain."""
    def empty() -> Tokenizer:
        tokenizer = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                               decoders.Strip(" ", 1, 0)])
        return tokenizer

    trained = empty()
    trained.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello there, café au lait"] * 20,
                                trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                                    show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = empty()
    tokenizer.model = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token="<unk>", fuse_unk=True)
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tokenizer


def byte_level(cpu_repository: Path) -> Tokenizer:
    return Tokenizer.from_file(str(cpu_repository / "ensemble" / "1" / "tokenizer" / "tokenizer.json"))


@pytest.fixture(params=["sentencepiece-style", "byte-level (SmolLM2)"])
def tokenizer(request) -> Tokenizer:
    if request.param == "sentencepiece-style":
        return sentencepiece_style()
    return byte_level(request.getfixturevalue("cpu_repository"))


@pytest.mark.parametrize("text", TEXTS)
def test_streamed_pieces_are_exact_where_per_token_decoding_is_not(tokenizer: Tokenizer, text: str):
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    whole = tokenizer.decode(ids, skip_special_tokens=True)
    naive = "".join(tokenizer.decode([token], skip_special_tokens=True) for token in ids)
    sentencepiece_spaces = "▁" in tokenizer.to_str()
    if sentencepiece_spaces or not text.isascii():  # byte-level BPE keeps ASCII spaces on its own
        assert naive != whole
    stream = StreamedText(tokenizer, skip_special_tokens=True)
    pieces = [stream.add([token]) for token in ids]
    assert "".join(pieces) + stream.tail(whole) == whole
    assert stream.tail(whole) == ""
    assert not any("\ufffd" in piece for piece in pieces)


def test_an_answer_cut_inside_a_character_ends_with_the_replacement_character(tokenizer: Tokenizer):
    ids = tokenizer.encode("fox 🎉", add_special_tokens=False).ids
    cut = ids[:-1]  # the emoji's last byte never arrives
    whole = tokenizer.decode(cut, skip_special_tokens=True)
    assert whole.endswith("\ufffd")
    stream = StreamedText(tokenizer, skip_special_tokens=True)
    streamed = stream.add(cut)
    assert "\ufffd" not in streamed
    assert streamed + stream.tail(whole) == whole


def test_a_whole_text_that_disagrees_with_what_was_sent_is_an_error(tokenizer: Tokenizer):
    stream = StreamedText(tokenizer, skip_special_tokens=True)
    stream.add(tokenizer.encode("hello there", add_special_tokens=False).ids)
    with pytest.raises(ValueError, match="is not a prefix of the whole answer"):
        stream.tail("goodbye")
