"""Switchyard benchmarks on a local stack: ``./switchyard bench [submit|ttft|vision]``, or
``./switchyard bench ab --baseline-rev REV`` (the working tree against REV, paired; see ab.py), or
``./switchyard bench pii`` (what PII redaction costs; see pii.py), or ``./switchyard bench recsys``
(recommendations: platform vs worker vs Feast's feature server + the model; see recsys.py), or
``./switchyard bench llm`` (the LLM lane vs LiteLLM's proxy and the engine, paired; see llm.py).

Each benchmark measures the platform and, in the same run, a baseline without it (the engine
called directly, or the API without Nginx), and prints p50/p99, throughput and the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from switchyard.devstack.stack import Stack, StackConfig, vllm_dirs
from switchyard_bench import ab, llm, pii, recsys, submit, ttft, vision

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(prog="switchyard bench")
    ap.add_argument("which", nargs="*", help="submit, ttft and/or vision (default: all); or ab, pii, recsys or llm alone")
    ap.add_argument("--postgres-dsn", default="postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard_bench")
    ap.add_argument("--baseline-rev", help="ab: the git revision to compare the working tree with")
    args = ap.parse_args()
    if args.which == ["ab"]:
        if not args.baseline_rev:
            ap.error("ab needs --baseline-rev")
        return run_ab(args.postgres_dsn, args.baseline_rev)
    if args.which == ["pii"]:
        return run_pii(args.postgres_dsn)
    if args.which == ["recsys"]:
        return run_recsys(args.postgres_dsn)
    if args.which == ["llm"]:
        return run_llm(args.postgres_dsn)
    args.which = args.which or ["submit", "ttft", "vision"]
    if set(args.which) - {"submit", "ttft", "vision"}:
        ap.error("benchmarks: submit, ttft, vision")
    cfg = StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-bench-")), postgres_dsn=args.postgres_dsn, worker_concurrency=4, engine_parallel=4,
                                vision="vision" in args.which, vllm=None if "ttft" in args.which else False,
                                # The submission benchmark builds a backlog on purpose: no admission limit.
                                api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"})
    stack = Stack(cfg)
    stack.start()
    try:
        if "submit" in args.which:
            submit.run(stack)
        if "ttft" in args.which:
            ttft.run(stack)
        if "vision" in args.which:
            vision.run(stack)
    finally:
        stack.stop()


def run_pii(postgres_dsn: str) -> None:
    """Redaction cost in process, then TTFT on a redact and a pass model of one llama.cpp (pii.py)."""
    in_process = pii.in_process()  # before the stack starts: nothing else on the CPUs
    state = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    cfg = StackConfig.ephemeral(state, postgres_dsn=postgres_dsn, worker_concurrency=4, engine_parallel=4, vision=False, vllm=False)
    cfg.catalog_overlays.append(pii.overlay(state, cfg.engine_port))
    stack = Stack(cfg)
    stack.start()
    try:
        pii.run(stack, in_process)
    finally:
        stack.stop()


def run_recsys(postgres_dsn: str) -> None:
    """The recsys realtime lane (recsys.py): the recsys worker required, no vLLM; the open-loop rates
    are far above the default per-model backlog, so no admission limit."""
    cfg = StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-bench-")), postgres_dsn=postgres_dsn, worker_concurrency=4, engine_parallel=4,
                                recsys=True, vllm=False, api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"})
    stack = Stack(cfg)
    stack.start()
    try:
        recsys.run(stack)
    finally:
        stack.stop()


def run_ab(postgres_dsn: str, baseline_rev: str) -> None:
    cfg = StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-bench-")), postgres_dsn=postgres_dsn, worker_concurrency=4, engine_parallel=4,
                                vision=True, vllm=False, api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"})
    stack = Stack(cfg)
    stack.start()
    try:
        ab.run(stack, baseline_rev)
    finally:
        stack.stop()


def run_llm(postgres_dsn: str) -> None:
    """The LLM lane vs LiteLLM's proxy and the engine (llm.py): llama.cpp, and vLLM when installed;
    LiteLLM from its own venv (build-support/setup-litellm.sh)."""
    subprocess.run([str(ROOT / "build-support" / "setup-litellm.sh")], check=True)
    state = Path(tempfile.mkdtemp(prefix="switchyard-bench-"))
    cfg = StackConfig.ephemeral(state, postgres_dsn=postgres_dsn, worker_concurrency=4, engine_parallel=4, vision=False, recsys=False,
                                vllm=all(p.exists() for p in vllm_dirs()), api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"})
    cfg.catalog_overlays.append(llm.overlay(state, cfg.engine_port, cfg.vllm_port if cfg.vllm else None))
    stack = Stack(cfg)
    stack.start()
    try:
        llm.run(stack)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
