"""What a JSON schema constraint costs the CPU runtime: CPU per generated token with and without one, and the
time to compile a schema the first time it is seen.

Builds (or reuses) the CPU repository, serves it with the real tritonserver and calls tensorrt_llm as the
gateway does (token ids over HTTP generate_stream), greedy. Per token: the same prompt answered
`--rounds` times unconstrained (run to `--tokens` with min_tokens) and as many times bound to a JSON
schema that cannot be complete within `--tokens` (an array of at least 1000 strings), interleaved so
drift in machine load hits both alike; CPU seconds of tritonserver and its python stubs over the tokens
generated. Compile: the runtime's own compiler (model_repository/tensorrt_llm/cpu/1/guided.py over the
repository's tokenizer info file) on schemas it has not seen, in this process; and on the server, how
much later a request's first token comes when its schema is new than when the same schema comes again
(cached). Prints numbers; asserts nothing.

Examples:
  python tools/guided_bench.py                         # 6 requests of up to 64 tokens each way, 5 fresh schemas
  python tools/guided_bench.py --rounds 5 --tokens 96 --concurrency 2
  python tools/guided_bench.py --repository out/cpu --schemas 10
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import serve
from harness import loadgen
from harness.llm_client import http_events
from transformers import AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "List words about the sea, as JSON."
# More items than any answer here has tokens: the constrained answer runs to its length, as the
# unconstrained one does with min_tokens, so both are the same number of tokens of the same prompt.
WORDS = {"type": "object", "properties": {"words": {"type": "array", "items": {"type": "string"}, "minItems": 1000}},
         "required": ["words"], "additionalProperties": False}


def fresh_schema() -> dict:
    """A schema no compiler has seen (a property name of its own), shaped like a tool's parameters:
    nested objects, an enum, a pattern, bounds, an array."""
    name = f"field_{uuid.uuid4().hex[:12]}"
    address = {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
               "required": ["street", "city", "zip"]}
    return {"type": "object", "properties": {
        name: {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]}, "address": address,
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}, "active": {"type": "boolean"}},
        "required": [name, "age", "role", "address"], "additionalProperties": False}


def compile_ms(repository: Path, schemas: list[dict]) -> tuple[float, float]:
    """Median ms the runtime's compiler takes for a schema it has not seen, and for one it has (cached)."""
    version_dir = repository / "tensorrt_llm" / "1"
    sys.path[:0] = [str(version_dir)]  # guided.py and the tokenizer_info.py copied beside it, as the model has them
    import guided
    import tokenizer_info
    from transformers import AutoConfig

    vocab_size = AutoConfig.from_pretrained(version_dir / "checkpoint").vocab_size
    guides = guided.Guides(tokenizer_info.read(version_dir / tokenizer_info.FILE_NAME, vocab_size), os.cpu_count())
    first, again = [], []
    for schema in schemas:
        for times in (first, again):
            began = time.perf_counter()
            guides.compile("json_schema", json.dumps(schema))
            times.append(1000 * (time.perf_counter() - began))
    return statistics.median(first), statistics.median(again)


class Caller:
    def __init__(self, http: str, repository: Path):
        tokenizer = AutoTokenizer.from_pretrained(repository / "ensemble" / "1" / "tokenizer")
        self.http = http
        self.end_id = tokenizer.eos_token_id
        self.prompt = list(tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                                         add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"])

    def call(self, tokens: int, **inputs) -> tuple[int, float]:
        """(tokens generated, seconds to the first one) for one greedy streamed request."""
        began = time.monotonic()
        first, count = None, 0
        for event in http_events(self.http, {"input_ids": self.prompt, "input_lengths": [len(self.prompt)],
                                             "request_output_len": [tokens], "end_id": [self.end_id],
                                             "runtime_top_k": [1], "streaming": [True], **inputs}):
            if "error" in event:
                raise RuntimeError(event["error"])
            ids = event.get("output_ids", [])
            count += len(ids) if isinstance(ids, list) else 1
            first = first if first is not None else time.monotonic() - began
        return count, first or 0.0


def cpu_per_token(server_pid: int, caller: Caller, kinds: dict[str, dict], rounds: int, tokens: int,
                  concurrency: int) -> dict[str, tuple[float, int]]:
    """(CPU seconds per generated token, tokens) of each kind of request (name -> its inputs): `rounds`
    rounds of `concurrency` requests of each kind, the kinds taking turns so that drift in the machine's
    load hits them alike, each round's CPU that of tritonserver and all its python stubs."""
    spent = {name: [0.0, 0] for name in kinds}
    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(rounds):
            for name, inputs in kinds.items():
                before = loadgen.cpu_snapshot(server_pid)
                generated = sum(pool.map(lambda _, given=inputs: caller.call(tokens, **given)[0], range(concurrency)))
                spent[name][0] += sum(loadgen.cpu_used(before, loadgen.cpu_snapshot(server_pid)).values())
                spent[name][1] += generated
    return {name: (seconds / max(count, 1), count) for name, (seconds, count) in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/guided_bench.py", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, help="a built CPU repository (default: build out/cpu)")
    parser.add_argument("--rounds", type=int, default=6,
                        help="rounds of --concurrency requests each way (default 6)")
    parser.add_argument("--tokens", type=int, default=64, help="the most tokens per request (default 64)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests at once (default 1)")
    parser.add_argument("--schemas", type=int, default=5, help="fresh schemas for the compile figures (default 5)")
    args = parser.parse_args(argv)

    repository = args.repository
    if repository is None:
        repository = ROOT / "out" / "cpu"
        subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu", "--out", str(repository)],
                       check=True, capture_output=True)
    model = json.loads((repository / "build.json").read_text())["model"]["name"]
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}; {model} fp32, CPU runtime")
    first_ms, cached_ms = compile_ms(repository, [fresh_schema() for _ in range(args.schemas)])

    ports = serve.Ports(18140, 18141, 18142)
    with tempfile.TemporaryDirectory() as scratch, \
            serve.running(repository, ports, log_file=Path(scratch) / "tritonserver.log") as server:
        caller = Caller(f"127.0.0.1:{ports.http}", repository)
        caller.call(4)  # warm-up
        schema = {"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": json.dumps(WORDS)}
        kinds = {"unconstrained": {"min_tokens": [args.tokens]}, "json_schema": schema}
        per_token = cpu_per_token(server.process.pid, caller, kinds, args.rounds, args.tokens, args.concurrency)
        overheads = []
        for _ in range(args.schemas):
            fresh = {"guided_decoding_guide_type": "json_schema", "guided_decoding_guide": json.dumps(fresh_schema())}
            new = caller.call(1, **fresh)[1]
            overheads.append(1000 * (new - caller.call(1, **fresh)[1]))

    plain, bound = per_token["unconstrained"], per_token["json_schema"]
    print(f"\nCPU per generated token, tritonserver + python stubs, {args.rounds * args.concurrency} greedy "
          f"requests each way (up to {args.tokens} tokens, concurrency {args.concurrency}):")
    print(f"  {'':<14}{'unconstrained':>15}{'json_schema':>15}")
    print(f"  {'tokens':<14}{plain[1]:>15}{bound[1]:>15}")
    print(f"  {'CPU ms/token':<14}{1000 * plain[0]:>15.1f}{1000 * bound[0]:>15.1f}   "
          f"({bound[0] / plain[0]:.2f}x)")
    print(f"\nfirst-request grammar compile, median of {args.schemas} schemas never seen before:")
    print(f"  the runtime's compiler, in process: {first_ms:.1f} ms "
          f"(the same schema again, cached: {cached_ms:.2f} ms)")
    print(f"  on the server, first token of a new schema's request later than of the same schema's next: "
          f"{statistics.median(overheads):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
