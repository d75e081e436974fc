"""OpenAI stop sequences, matched on the text: the answer ends before the first one, which is not sent.

Matching text (not token ids) finds a sequence however the model tokenized it, across token
boundaries. While a stream's end could still be the start of a stop sequence, that end is held back,
so a streamed answer never shows text that the non-streamed one cuts.
"""

from __future__ import annotations


class StopText:
    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        """The part of held + piece that is safe to send; sets `hit` when a stop sequence appeared."""
        if not self.stops:
            return piece
        text = self.held + piece
        found = [i for i in (text.find(stop) for stop in self.stops) if i >= 0]
        if found:
            self.hit, self.held = True, ""
            return text[:min(found)]
        keep = max((n for stop in self.stops for n in range(1, min(len(stop), len(text) + 1))
                    if text.endswith(stop[:n])), default=0)
        self.held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """At the end of the answer: what was held back was no stop sequence after all."""
        held, self.held = self.held, ""
        return held
