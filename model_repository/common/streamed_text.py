"""Incremental detokenization of one streamed answer (shared by our python models).

tokenizers' DecodeStream does constant work per token: it keeps only a short window of ids, holds
back bytes that do not yet form a whole UTF-8 character, and applies the tokenizer's own decoder
(byte-level BPE, or SentencePiece's "▁" spaces) across token boundaries. At the end of the stream,
the decode of the whole answer settles the tail, so the pieces always add up to exactly that text,
even when the answer ends in the middle of a character.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class StreamedText:
    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool):
        self.tokenizer = tokenizer
        self.decoder = DecodeStream(skip_special_tokens=skip_special_tokens)
        self.ids: list[int] = []
        self.sent = ""

    def add(self, ids: list[int]) -> str:
        """The text that the new ids complete; empty while a character is still incomplete."""
        piece = ""
        for token in ids:
            self.ids.append(token)
            piece += self.decoder.step(self.tokenizer, token) or ""
        self.sent += piece
        return piece

    def tail(self, whole_text: str) -> str:
        """What is left to send once the whole answer's text is known."""
        if not whole_text.startswith(self.sent):
            raise ValueError(f"streamed text {self.sent[-40:]!r} is not a prefix of the whole answer")
        return whole_text[len(self.sent):]
