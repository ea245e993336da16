"""``wsl serve``: run the prediction service (HTTP API + web page) with uvicorn."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from wsl.errors import ConfigError


def register(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the prediction service: HTTP API and web page",
                       description="Serve predictions over HTTP: upload a checkpoint (or name a Hugging Face "
                       "Hub repo) and get its predicted test accuracy. Open http://HOST:PORT/ for the web page, "
                       "/docs for the API reference.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--predictor", metavar="REF", action="append", default=None,
                   help="predictor directory, hf:// URI or shipped name; repeat for several "
                   "(default: every shipped predictor)")
    p.add_argument("--max-upload-mb", type=float, default=200, help="largest accepted upload (default 200)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="prediction worker processes (default 1; each holds torch and the predictors)")
    p.add_argument("--queue", type=int, default=16, metavar="N",
                   help="requests that may wait for a worker before new ones get 503 (default 16)")
    p.add_argument("--timeout", type=float, default=60, metavar="S", help="wall-clock limit per prediction")
    p.add_argument("--cpu-limit", type=float, default=60, metavar="S", help="CPU-time limit per prediction")
    p.add_argument("--memory-mb", type=int, default=4096, metavar="MB",
                   help="address-space budget of a worker beyond its baseline (0: unlimited)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError as exc:
        raise ConfigError(f"wsl serve needs the 'serve' extra (pip install 'wsl[serve]'): {exc}") from exc
    from wsl.serve import create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port}: expected 1-65535")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.predictor, args.max_upload_mb, workers=args.workers, max_queue=args.queue,
                     time_limit_s=args.timeout, cpu_limit_s=args.cpu_limit, memory_mb=args.memory_mb)
    print(f"wsl serve: http://{args.host}:{args.port}/ (API reference at /docs); Ctrl-C to stop", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
