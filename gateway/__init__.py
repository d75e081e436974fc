"""OpenAI-compatible HTTP API in front of Triton (issue 11): `python -m gateway --repository out/cpu`.

The gateway decodes streamed token ids with the incremental detokenizer the Triton models share
(model_repository/common/streamed_text.py), so its streamed text is exactly its non-streamed text,
and refuses sampling values with the ranges they check (sampling_ranges.py). Both live in
model_repository/common, which is put on the path here; the image copies it to the same place
relative to this folder (gateway/Dockerfile).
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMON = Path(__file__).resolve().parent.parent / "model_repository" / "common"
if str(COMMON) not in sys.path:
    sys.path.append(str(COMMON))
