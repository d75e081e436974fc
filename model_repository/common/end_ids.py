"""Every end-of-sequence id of a model (shared by preprocessing and the OpenAI gateway).

Standard library only: copied beside every python model at layout time, imported by gateway/.
"""

from __future__ import annotations

import json
from pathlib import Path


def end_ids(tokenizer_dir: Path, tokenizer_eos: int | None) -> list[int]:
    """Every end-of-sequence id, the tokenizer's own first: generation_config.json may list several
    (Llama-3.1-Instruct: 128001, 128008, 128009), and transformers' generate stops on each."""
    ids = [] if tokenizer_eos is None else [int(tokenizer_eos)]
    path = Path(tokenizer_dir) / "generation_config.json"
    listed = json.loads(path.read_text()).get("eos_token_id") if path.is_file() else None
    for token in listed if isinstance(listed, list) else [] if listed is None else [listed]:
        if int(token) not in ids:
            ids.append(int(token))
    if not ids:
        raise ValueError(f"{tokenizer_dir} names no end-of-sequence token (eos_token / eos_token_id)")
    return ids
