"""Request text as str: bytes that are not UTF-8 are refused by the input's name, with the byte where they break."""

from __future__ import annotations


class NotUtf8(ValueError):
    """An input's text is not UTF-8; the message names the input and the first bad byte."""


def decode_text(raw: bytes | str, name: str) -> str:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotUtf8(
            f"{name} is not valid UTF-8 (byte {error.start}: {raw[error.start:error.start + 1]!r})") from None
