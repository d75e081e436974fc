"""A built repository with tensorrt_llm replaced by the no-cost stand-in engine (tools/harness/standin_engine/).

The stand-in emits the token ids of PASSAGE (English, Japanese, Chinese, accents, emoji, a ZWJ
sequence: characters that span several tokens), cycled from offset seed % len, so every stream's
exact ids and text are known in advance (expected_ids, expected_text).

Examples:
  python tools/harness/standin.py --repository out/cpu --out /tmp/standin     # lay it out, then serve it:
  python tools/serve.py --repository /tmp/standin
  python tools/harness/standin.py --repository out/cpu --out /tmp/standin --per-token-delay-us 2000
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "build"))
from layout import link_or_copy  # noqa: E402  (build/ is a script folder, not a package)

ENGINE = Path(__file__).resolve().parent / "standin_engine"
PASSAGE = ("The lighthouse keeper wrote in his log: 灯台守は毎晩、海を見ていた。"
           "他说：“大海从不睡觉，我也不睡。” Café, naïve, déjà vu — 🌊🗼✨ "
           "👩‍👩‍👧 family of three, 🇯🇵 flag, ½ cup of tea. 東京の夜は静かだ。 ")


class StandinError(RuntimeError):
    """The stand-in repository cannot be laid out from what was given."""


def tokenizer_of(repository: Path) -> Tokenizer:
    """The tokenizer the repository's postprocessing decodes with, so expected text is what it would produce."""
    found = sorted(Path(repository).glob("postprocessing/*/tokenizer/tokenizer.json"))
    if not found:
        raise StandinError(f"{repository} has no postprocessing/<version>/tokenizer/tokenizer.json; "
                           "is it a built repository (build/compile.py --gpu cpu)?")
    return Tokenizer.from_file(str(found[0]))


def passage_ids(tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(PASSAGE, add_special_tokens=False).ids


def expected_ids(cycle: list[int], seed: int, count: int) -> list[int]:
    """What the stand-in emits for a request with this seed and request_output_len (see its model.py)."""
    start = seed % len(cycle)
    return [cycle[(start + i) % len(cycle)] for i in range(count)]


def expected_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def engine_config(per_token_delay_us: int) -> str:
    text = (ENGINE / "config.pbtxt").read_text()
    return re.sub(r'(key: "per_token_delay_us" value: \{ string_value: ")\d+(")', rf"\g<1>{per_token_delay_us}\2",
                  text)


def layout(repository: Path, out: Path, per_token_delay_us: int = 0) -> Path:
    """Lay out `out` = `repository` with tensorrt_llm replaced by the stand-in; `repository` is never written."""
    repository, out = Path(repository).resolve(), Path(out).resolve()
    if not (repository / "ensemble").is_dir() or not (repository / "tensorrt_llm").is_dir():
        raise StandinError(f"{repository} is not a built model repository (needs ensemble/ and tensorrt_llm/)")
    if out == repository or repository in out.parents:
        raise StandinError(f"--out {out} must be outside {repository}")
    tokenizer = tokenizer_of(repository)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(repository, out, copy_function=lambda src, dst: link_or_copy(Path(src), Path(dst)),
                    ignore=lambda folder, names: ["tensorrt_llm", "__pycache__"] if Path(folder) == repository
                    else [n for n in names if n == "__pycache__"])
    engine = out / "tensorrt_llm"
    (engine / "1").mkdir(parents=True)
    (engine / "config.pbtxt").write_text(engine_config(per_token_delay_us))
    shutil.copy2(ENGINE / "1" / "model.py", engine / "1" / "model.py")
    (engine / "1" / "token_ids.json").write_text(json.dumps(passage_ids(tokenizer)))
    return out


def cycle_of(repository: Path) -> list[int]:
    """The ids a laid-out stand-in repository emits."""
    return json.loads((Path(repository) / "tensorrt_llm" / "1" / "token_ids.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=ROOT / "out" / "cpu", help="built repository to copy")
    parser.add_argument("--out", type=Path, required=True, help="new folder for the stand-in repository")
    parser.add_argument("--per-token-delay-us", type=int, default=0, help="pause per decode step (default 0)")
    args = parser.parse_args(argv)
    try:
        out = layout(args.repository, args.out, args.per_token_delay_us)
    except StandinError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"stand-in repository: {out} ({len(cycle_of(out))} token ids cycled)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
