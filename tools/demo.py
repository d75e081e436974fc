"""Quickstart: build the default model for CPU, serve it with a real Triton, ask it one question.

Examples:
  python tools/demo.py
  python tools/demo.py --prompt "Write a haiku about GPUs." --max-tokens 48
  python tools/demo.py --keep-serving        # leave Triton up afterwards (Ctrl-C to stop)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import serve
from llm_client import GrpcLlmClient

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--keep-serving", action="store_true")
    args = parser.parse_args(argv)

    build = subprocess.run([sys.executable, str(ROOT / "build" / "compile.py"), "--gpu", "cpu"],
                           stdout=subprocess.PIPE, text=True)
    if build.returncode != 0:
        return build.returncode
    repository = Path(build.stdout.strip())
    ports = serve.Ports()
    print(f"* serve: {repository}", file=sys.stderr)
    log = repository.parent / "tritonserver.log"
    try:
        with serve.running(repository, ports, log_file=log) as server:
            print(f"* READY in {server.seconds_to_ready:.1f} s (log: {log})", file=sys.stderr)
            client = GrpcLlmClient(f"127.0.0.1:{ports.grpc}")
            print(f"\n> {args.prompt}\n", flush=True)
            answer = client.send({"text_input": args.prompt, "max_tokens": args.max_tokens, "stream": True})
            client.close()
            if answer.error:
                print(f"error: {answer.error}", file=sys.stderr)
                return 1
            print(answer.text + "\n")
            print(f"Ask it yourself: curl -s localhost:{ports.http}/v2/models/ensemble/generate "
                  """-d '{"text_input": "Name three planets.", "max_tokens": 32}'""", file=sys.stderr)
            if args.keep_serving:
                print("* serving; Ctrl-C to stop", file=sys.stderr)
                server.process.wait()
    except serve.ServeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
