"""Run the gateway: `python -m gateway --repository out/cpu --triton 127.0.0.1:8000 --port 9000`.

Examples:
  python -m gateway --repository out/cpu                          # beside `tools/serve.py --repository out/cpu`
  python -m gateway --repository /models --host 0.0.0.0 --workers 4   # as the pod runs it
  python -m gateway --repository out/cpu --api-keys-dir /etc/gateway-api-keys --max-in-flight 8
  PROMETHEUS_MULTIPROC_DIR=/run/gateway-metrics python -m gateway --repository /models --workers 2

GET /metrics serves its Prometheus metrics (gateway/metrics.py). With several workers they share
their values through files in PROMETHEUS_MULTIPROC_DIR, emptied at start (default: a new temporary
folder, removed at exit).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import uvicorn

from gateway import metrics
from gateway.admission import DEFAULT_MAX_BODY_BYTES, KeysError, default_max_in_flight, load_keys
from gateway.app import PATHS, Settings, choose_path, serving
from gateway.repository import RepositoryError, load

# Google's external Application Load Balancer keeps its connections to a backend open for 600 s and
# asks backends to keep theirs longer ("you must configure your backend software so that its HTTP
# keepalive (TCP idle) timeout value is greater than 600 seconds"); uvicorn's own default is 5 s, so
# the LB would send requests down connections the gateway has just closed: 502s to clients.
KEEP_ALIVE_SECONDS = 620


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="the built model repository Triton serves")
    parser.add_argument("--triton", default="127.0.0.1:8000", help="Triton's HTTP address (default 127.0.0.1:8000)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--workers", type=int, default=1, help="worker processes (uvicorn --workers)")
    parser.add_argument("--path", choices=PATHS, default="auto",
                        help="direct: token ids to tensorrt_llm; ensemble: text to the ensemble (default: auto)")
    parser.add_argument("--model-name", help="the model id clients send (default: build.json's model name)")
    parser.add_argument("--drain-seconds", type=int, default=30,
                        help="on SIGTERM, how long open streams may finish (default 30; the pod: Triton's "
                             "--exit-timeout-secs)")
    parser.add_argument("--keep-alive-seconds", type=int, default=KEEP_ALIVE_SECONDS,
                        help=f"how long an idle client connection stays open (default {KEEP_ALIVE_SECONDS})")
    parser.add_argument("--api-keys-dir", type=Path,
                        help="a folder of one file per API key, named for its client (a Secret volume); clients "
                             "must send `Authorization: Bearer <key>`. Absent or empty: no key is asked for")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help=f"larger request bodies get a 413 (default {DEFAULT_MAX_BODY_BYTES})")
    parser.add_argument("--max-in-flight", type=int,
                        help="generation requests each worker takes at once; beyond them a 429 with Retry-After "
                             "(default: 2 x the build's max_batch_size, shared among the workers)")
    args = parser.parse_args(argv)
    if args.max_in_flight is not None and args.max_in_flight < 1 or args.max_body_bytes < 1:
        parser.error("--max-in-flight and --max-body-bytes must be at least 1")
    try:  # refuse a bad repository, path, recommended sampling or key here, once, not in every worker
        model = load(args.repository.resolve(), args.model_name)
        serving(model, choose_path(model, args.path))
        load_keys(args.api_keys_dir)
        metrics.prepare_directory(args.workers)
    except (RepositoryError, KeysError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    in_flight = args.max_in_flight or default_max_in_flight(model.max_batch_size, args.workers)
    settings = Settings(args.repository.resolve(), args.triton, args.path, args.model_name,
                        args.api_keys_dir.resolve() if args.api_keys_dir else None, args.max_body_bytes, in_flight)
    os.environ.update(settings.environment())  # what each worker's create_app reads
    uvicorn.run("gateway.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="info", access_log=False, timeout_graceful_shutdown=args.drain_seconds,
                timeout_keep_alive=args.keep_alive_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
