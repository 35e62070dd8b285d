"""``python -m switchyard.devstack up|setup|reload|keys``: run the whole platform locally in the foreground;
manage its API keys."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from switchyard.devstack import keys, models
from switchyard.devstack.gemma import gemma3_270m_gguf
from switchyard.devstack.procs import StartError
from switchyard.devstack.stack import Stack, StackConfig
from switchyard.devstack.supervisor import GaveUp, RestartPolicy

PID_FILE = "switchyard-up.pid"


def fetch_models() -> None:
    print(models.smollm2_gguf(fetch=True))
    print(gemma3_270m_gguf(fetch=True))


def _up(args: argparse.Namespace) -> int:
    try:
        policy = RestartPolicy()  # SWITCHYARD_RESTART_*: a bad value stops us before anything starts
    except ValidationError as e:
        print(f"Switchyard: bad restart policy setting: {e}", file=sys.stderr)
        return 1
    fetch_models()
    cfg = StackConfig(state_dir=Path(args.state_dir).resolve(), http_port=args.http_port, api_port=args.api_port,
                      temporal_port=args.temporal_port, temporal_ui_port=args.temporal_ui_port, engine_port=args.engine_port,
                      gemma_port=args.gemma_port, sglang_port=args.sglang_port, vllm_port=args.vllm_port, vllm=False if args.no_vllm else None,
                      postgres_dsn=args.postgres_dsn, redis_url=args.redis_url)
    stack = Stack(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print("Switchyard: starting Temporal, the LLM engines, worker-llm, API and Nginx...", flush=True)
    t0 = time.monotonic()
    try:
        stack.start()
    except StartError as e:
        print(f"Switchyard failed to start: {e}", file=sys.stderr)
        return 1
    for note in stack.notes:
        print(f"  note: {note}")
    supervisor = stack.supervisor(policy)
    print(f"Switchyard is up in {time.monotonic() - t0:.1f}s:\n{stack.summary()}\n"
          f"Requests need a key: -H \"Authorization: Bearer $(cat {cfg.state_dir / keys.DEV_KEY_FILE})\"; `./switchyard keys` manages keys.\n"
          f"A part that crashes is {supervisor.policy.describe()}.\n"
          "Ctrl-C stops everything; `./switchyard reload` reloads the model catalog.", flush=True)
    pid_file = cfg.state_dir / PID_FILE
    pid_file.write_text(str(os.getpid()))
    # SIGUSR1, not SIGHUP: a closed terminal still stops the launcher; it sends SIGHUP to each process.
    signal.signal(signal.SIGUSR1, lambda *_: stack.reload_catalog())
    try:
        supervisor.run(stop)
    except GaveUp as e:
        print(f"Switchyard: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("Switchyard: stopping...", flush=True)
        pid_file.unlink(missing_ok=True)
        stack.stop()
    return 0


def _reload(args: argparse.Namespace) -> int:
    """Ask the running `up` (its pid file in the state folder) to reload the catalog everywhere."""
    pid_file = Path(args.state_dir) / PID_FILE
    try:
        os.kill(int(pid_file.read_text()), signal.SIGUSR1)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        print(f"no running `./switchyard up` found ({pid_file})", file=sys.stderr)
        return 1
    print("catalog reload requested: the API and workers validate the new catalog first and keep the old one if it is bad "
          f"(see {Path(args.state_dir) / 'logs'}/api.log)")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(prog="switchyard")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="run the platform in the foreground",
                        description="Run the platform in the foreground. A part that crashes is restarted with exponential backoff "
                                    "(1 s doubling to 30 s, reset once it has stayed up 60 s); one that fails again after 5 restarts "
                                    "within 300 s stops the platform. Environment: SWITCHYARD_RESTART_BACKOFF_INITIAL_S, "
                                    "SWITCHYARD_RESTART_BACKOFF_MAX_S, SWITCHYARD_RESTART_RESET_AFTER_S, SWITCHYARD_RESTART_MAX_RESTARTS, "
                                    "SWITCHYARD_RESTART_WINDOW_S.")
    up.add_argument("--state-dir", default=".state", help="logs, Temporal's SQLite file, rendered configs (default: .state)")
    up.add_argument("--http-port", type=int, default=8080, help="Nginx ingress (default: 8080)")
    up.add_argument("--api-port", type=int, default=8000, help="API behind Nginx (default: 8000)")
    up.add_argument("--temporal-port", type=int, default=7233, help="Temporal frontend (default: 7233)")
    up.add_argument("--temporal-ui-port", type=int, default=8233, help="Temporal UI (default: 8233)")
    up.add_argument("--engine-port", type=int, default=8090, help="llama.cpp with SmolLM2 (default: 8090)")
    up.add_argument("--gemma-port", type=int, default=8091, help="llama.cpp with Gemma 3 (default: 8091)")
    up.add_argument("--sglang-port", type=int, default=8092, help="the fake SGLang server (default: 8092)")
    up.add_argument("--vllm-port", type=int, default=8093, help="vLLM, when installed (default: 8093)")
    up.add_argument("--no-vllm", action="store_true", help="do not start vLLM even if it is installed")
    up.add_argument("--postgres-dsn", default="postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard",
                    help="used if reachable, else a private PostgreSQL is started in the state folder")
    up.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="used if reachable, else a private Redis is started")
    sub.add_parser("setup", help="fetch model files into the cache")
    reload = sub.add_parser("reload", help="reload the model catalog (infra/catalog/models.yaml) in the running platform")
    reload.add_argument("--state-dir", default=".state", help="the state folder of the running `up` (default: .state)")
    keys.add_parser(sub)
    args = ap.parse_args()
    if args.cmd == "keys":
        return keys.main(args)
    if args.cmd == "setup":
        fetch_models()
        return 0
    if args.cmd == "reload":
        return _reload(args)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
