"""Grammar-constrained decoding with xgrammar, as TensorRT-LLM's C++ backend does it (its GuidedDecoder).

One GrammarCompiler over the tokenizer info file the build wrote (tokenizer_info.py), with its cache:
a guide is compiled once, on the request's way in (Triton's execute thread, not the decode thread),
and every later request with the same guide reuses it. Each constrained sequence has a GrammarMatcher;
before each choice its next-token bitmask is applied to that row's logits, so tokens the grammar
cannot take get -inf, and the chosen token is accepted into the matcher after. Rows without a guide
in the same batch are left as they are. The end id is a stop token of every matcher: the grammar
allows it only once the text is complete, and it ends the sequence as always.

The guide types and what each means are TensorRT-LLM's (build/tensorrtllm_backend.toml,
[guided_decoding]): json is any JSON value (xgrammar's builtin JSON grammar; OpenAI's json_object),
json_schema a JSON schema, regex a regular expression, ebnf_grammar a grammar in xgrammar's EBNF.
"""

from __future__ import annotations

import re

import torch
import xgrammar
from tokenizer_info import GUIDE_TYPES

WHAT = {"json_schema": "a valid JSON schema", "regex": "a valid regular expression",
        "ebnf_grammar": "a valid EBNF grammar"}
# Compiled grammars kept for reuse; a JSON schema compiles to tens of KiB to a few MiB.
CACHE_BYTES = 256 << 20
# xgrammar prefixes its messages with a timestamp and the C++ file and line that raised them.
_SOURCE_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: .*? is false: )?")


class GuideError(ValueError):
    """A guide that cannot be compiled; the message names the input and the problem."""


class Guides:
    """The compiler for one model: compiles and caches guides, makes a matcher per sequence."""

    def __init__(self, tokenizer_info: xgrammar.TokenizerInfo, threads: int):
        self.compiler = xgrammar.GrammarCompiler(tokenizer_info, max_threads=threads, cache_enabled=True,
                                                 cache_limit_bytes=CACHE_BYTES)

    def compile(self, guide_type: str, guide: str | None) -> xgrammar.CompiledGrammar:
        if guide_type not in GUIDE_TYPES:
            raise GuideError(f"guided_decoding_guide_type {guide_type!r} is not one of {', '.join(GUIDE_TYPES)}")
        if guide_type == "json":
            return self.compiler.compile_builtin_json_grammar()
        if not guide:
            raise GuideError(f"guided_decoding_guide is required with guided_decoding_guide_type {guide_type}")
        compile_as = {"json_schema": self.compiler.compile_json_schema, "regex": self.compiler.compile_regex,
                      "ebnf_grammar": self.compiler.compile_grammar}[guide_type]
        try:
            return compile_as(guide)
        except RuntimeError as error:  # xgrammar's parse errors
            reason = _SOURCE_PREFIX.sub("", str(error).strip().splitlines()[0])
            raise GuideError(f"guided_decoding_guide is not {WHAT[guide_type]}: {reason}") from None


def matcher(grammar: xgrammar.CompiledGrammar, end_id: int) -> xgrammar.GrammarMatcher:
    """A sequence's matcher: its end id is the one token that ends a complete answer."""
    return xgrammar.GrammarMatcher(grammar, override_stop_tokens=[end_id])


def constrain(matchers: list[xgrammar.GrammarMatcher | None], logits: torch.Tensor) -> None:
    """Mask, in place, each constrained row's logits to the tokens its grammar can take next."""
    rows = [row for row, m in enumerate(matchers) if m is not None]
    if not rows:
        return
    bitmask = xgrammar.allocate_token_bitmask(len(matchers), logits.shape[-1])
    for row in rows:
        matchers[row].fill_next_token_bitmask(bitmask, row)
    xgrammar.apply_token_bitmask_inplace(logits, bitmask, vocab_size=logits.shape[-1], indices=rows)
