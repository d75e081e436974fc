"""Quickstart: build the default model for CPU, serve it with a real Triton, ask it one question.

Examples:
  python tools/demo.py
  python tools/demo.py --prompt "Write a haiku about GPUs." --max-tokens 48
  python tools/demo.py --keep-serving        # leave Triton up afterwards (Ctrl-C to stop)
  python tools/demo.py --openai              # ask again through the OpenAI API (gateway/, openai SDK)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import serve
from harness.llm_client import GrpcLlmClient

ROOT = Path(__file__).resolve().parent.parent


def ask_openai(repository: Path, ports: serve.Ports, args: argparse.Namespace, port: int = 9000) -> int:
    """The same question through the gateway, with the official openai SDK, streamed."""
    import openai  # the test extra that `make demo` installs

    gateway = serve.start_gateway(repository, ports, "127.0.0.1", port)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        for _ in range(100):  # its start: loading the tokenizer, a few seconds
            try:
                model = client.models.list().data[0].id
                break
            except openai.APIConnectionError:
                time.sleep(0.2)
        else:
            print("error: the gateway did not start", file=sys.stderr)
            return 1
        print(f"* OpenAI API: http://127.0.0.1:{port}/v1, model {model}\n", file=sys.stderr)
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": args.prompt}],
                                                max_tokens=args.max_tokens, temperature=0, stream=True)
        for chunk in stream:
            print(chunk.choices[0].delta.content or "", end="", flush=True)
        print("\n")
        print(f"Ask it yourself: curl -s localhost:{port}/v1/chat/completions -d '{{\"model\": \"{model}\", "
              """"messages": [{"role": "user", "content": "Name three planets."}]}'""", file=sys.stderr)
        return 0
    finally:
        gateway.terminate()
        gateway.wait(40)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default="What is the capital of France? Answer in one sentence.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--keep-serving", action="store_true")
    parser.add_argument("--openai", action="store_true", help="also ask through the OpenAI-compatible gateway")
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
            if args.openai and ask_openai(repository, ports, args) != 0:
                return 1
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
