"""Switchyard benchmarks on a local stack: ``./switchyard bench [submit|ttft|vision]``, or
``./switchyard bench ab --baseline-rev REV`` (the working tree against REV, paired; see ab.py), or
``./switchyard bench pii`` (what PII redaction costs; see pii.py), or ``./switchyard bench recsys``
(recommendations: platform vs worker vs Feast's feature server + the model; see recsys.py), or
``./switchyard bench llm`` (the LLM lane vs LiteLLM's proxy and the engine, paired; see llm.py), or
``./switchyard bench temporal`` (Temporal's share of a job's start, sandbox and eager on/off; temporal_hop.py).

Each benchmark measures the platform and, in the same run, a baseline without it (the engine
called directly, or the API without Nginx), and prints p50/p99, throughput and the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from switchyard.devstack.stack import Stack, StackConfig, vllm_dirs
from switchyard_bench import ab, llm, pii, recsys, submit, temporal_hop, ttft, vision

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(prog="switchyard bench")
    ap.add_argument("which", nargs="*", help="submit, ttft and/or vision (default: all); or ab, pii, recsys, llm or temporal alone")
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
    if args.which == ["temporal"]:
        return temporal_hop.run()
    args.which = args.which or ["submit", "ttft", "vision"]
    if set(args.which) - {"submit", "ttft", "vision"}:
        ap.error("benchmarks: submit, ttft, vision")
    which = set(args.which)

    def run(stack: Stack) -> None:
        if "submit" in which:
            submit.run(stack)
        if "ttft" in which:
            ttft.run(stack)
        if "vision" in which:
            vision.run(stack)

    # The submission benchmark builds a backlog on purpose (no admission limit: _on_stack).
    _on_stack(_config(args.postgres_dsn, vision="vision" in which, vllm=None if "ttft" in which else False), run)


def _config(postgres_dsn: str, **kw: Any) -> StackConfig:
    """A benchmark's stack on free ports; its open loops and backlogs are far above the default
    per-model backlog, so no admission limit."""
    return StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-bench-")), postgres_dsn=postgres_dsn, worker_concurrency=4, engine_parallel=4,
                                 api_env={"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"}, **kw)


def _on_stack(cfg: StackConfig, run: Callable[[Stack], None]) -> None:
    stack = Stack(cfg)
    stack.start()
    try:
        run(stack)
    finally:
        stack.stop()


def run_pii(postgres_dsn: str) -> None:
    """Redaction cost in process, then TTFT on a redact and a pass model of one llama.cpp (pii.py)."""
    in_process = pii.in_process()  # before the stack starts: nothing else on the CPUs
    cfg = _config(postgres_dsn, vision=False, vllm=False)
    cfg.catalog_overlays.append(pii.overlay(cfg.state_dir, cfg.engine_port))
    _on_stack(cfg, lambda stack: pii.run(stack, in_process))


def run_recsys(postgres_dsn: str) -> None:
    """The recsys realtime lane (recsys.py): the recsys worker required, no vLLM."""
    _on_stack(_config(postgres_dsn, recsys=True, vllm=False), recsys.run)


def run_ab(postgres_dsn: str, baseline_rev: str) -> None:
    _on_stack(_config(postgres_dsn, vision=True, vllm=False), lambda stack: ab.run(stack, baseline_rev))


def run_llm(postgres_dsn: str) -> None:
    """The LLM lane vs LiteLLM's proxy and the engine (llm.py): llama.cpp, and vLLM when installed;
    LiteLLM from its own venv (build-support/setup-litellm.sh)."""
    subprocess.run([str(ROOT / "build-support" / "setup-litellm.sh")], check=True)
    cfg = _config(postgres_dsn, vision=False, recsys=False, vllm=all(p.exists() for p in vllm_dirs()))
    cfg.catalog_overlays.append(llm.overlay(cfg.state_dir, cfg.engine_port, cfg.vllm_port if cfg.vllm else None))
    _on_stack(cfg, llm.run)


if __name__ == "__main__":
    main()
