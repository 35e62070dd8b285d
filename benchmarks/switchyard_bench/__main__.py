"""Switchyard benchmarks on a local stack: ``./switchyard bench [submit|ttft|vision]``, or
``./switchyard bench ab --baseline-rev REV`` (the working tree against REV, paired; see ab.py), or
``./switchyard bench pii`` (what PII redaction costs; see pii.py), or ``./switchyard bench recsys``
(recommendations: platform vs worker vs Feast's feature server + the model; see recsys.py), or
``./switchyard bench llm`` (the LLM lane vs LiteLLM's proxy and the engine, paired; see llm.py), or
``./switchyard bench temporal`` (Temporal's share of a job's start, sandbox and eager on/off; temporal_hop.py), or
``./switchyard bench capacity`` (the highest rate LiteLLM and Switchyard carry at p99 TTFT <= 500 ms in front
of an engine stand-in, 1 and 2 API processes; capacity.py), or
``./switchyard bench soak [--duration-s 600] [--rate LANE=RPS] [--inject-bad N]`` (mixed load over every
domain: errors and every process's memory over time; soak.py), or ``./switchyard bench shadow`` (what shadow
deployment costs the primary, at the default sample rate and at 100 %, paired; shadow.py).

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

from switchyard.devstack.stack import Stack, StackConfig, fresh_database, vllm_dirs
from switchyard_bench import ab, capacity, llm, pii, recsys, shadow, soak, submit, temporal_hop, ttft, vision

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(prog="switchyard bench")
    ap.add_argument("which", nargs="*", help="submit, ttft and/or vision (default: all); or ab, pii, recsys, llm, capacity, temporal, soak or shadow alone")
    ap.add_argument("--postgres-dsn", default="postgresql+asyncpg://postgres@127.0.0.1:5432/switchyard_bench")
    ap.add_argument("--baseline-rev", help="ab: the git revision to compare the working tree with")
    ap.add_argument("--rounds", type=int, default=shadow.ROUNDS, help=f"shadow: pairs per row (default {shadow.ROUNDS})")
    sk = ap.add_argument_group("soak")
    sk.add_argument("--duration-s", type=float, default=600, help="soak: seconds measured after the warm-up (default 600)")
    sk.add_argument("--warmup-s", type=float, default=300, help="soak: seconds of the same load before the start sample (default 300: Temporal's caches fill for ~3 min, docs/soak.md)")
    sk.add_argument("--sample-every-s", type=float, default=30, help="soak: seconds between memory samples (default 30)")
    sk.add_argument("--rate", action="append", default=[], metavar="LANE=RPS",
                    help=f"soak: one lane's requests per second, 0 turns it off (repeatable; defaults: {', '.join(f'{k}={v:g}' for k, v in soak.DEFAULT_RATES.items())})")
    sk.add_argument("--inject-bad", type=int, default=0, help="soak: this many known-bad requests, spread over the run (each must get its exact 4xx)")
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
    if args.which == ["capacity"]:
        return run_capacity(args.postgres_dsn)
    if args.which == ["shadow"]:
        return run_shadow(args.postgres_dsn, args.rounds)
    if args.which == ["soak"]:
        rates = dict(soak.DEFAULT_RATES)
        for spec in args.rate:
            lane, _, rps = spec.partition("=")
            if lane not in rates or not rps.replace(".", "", 1).isdigit():
                ap.error(f"--rate {spec}: LANE=RPS with LANE one of {', '.join(rates)}")
            rates[lane] = float(rps)
        return run_soak(args.postgres_dsn, rates, args.duration_s, args.warmup_s, args.sample_every_s, args.inject_bad)
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
    return StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-bench-")), postgres_dsn=postgres_dsn,
                                 **{"worker_concurrency": 4, "engine_parallel": 4, "api_env": {"SWITCHYARD_MAX_PENDING_PER_MODEL": "1000000"}, **kw})


def _on_stack(cfg: StackConfig, run: Callable[[Stack], None]) -> None:
    fresh_database(cfg.postgres_dsn, cfg.redis_url)  # nothing left by an earlier run (its unfinished jobs fill the backlog)
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


def run_capacity(postgres_dsn: str) -> None:
    """LiteLLM and Switchyard in front of the engine stand-in (capacity.py): no vLLM, vision or recsys;
    worker-llm runs as many generations at once as its setting allows (the stand-in has no slots)."""
    subprocess.run([str(ROOT / "build-support" / "setup-litellm.sh")], check=True)
    capacity.run(lambda api_workers: _config(postgres_dsn, vision=False, recsys=False, vllm=False, worker_concurrency=256, api_workers=api_workers))


def run_soak(postgres_dsn: str, rates: dict[str, float], duration_s: float, warmup_s: float, sample_every_s: float, inject_bad: int) -> None:
    """Every part of the platform (vLLM when installed) with the shipped admission limits (a soak
    runs below saturation, so they never bite); exits 1 when the soak fails (soak.py)."""
    cfg = StackConfig.ephemeral(Path(tempfile.mkdtemp(prefix="switchyard-soak-")), postgres_dsn=postgres_dsn, vision=True, recsys=True)
    passed: list[bool] = []
    _on_stack(cfg, lambda stack: passed.append(soak.run(stack, rates, duration_s, warmup_s, sample_every_s, inject_bad)))
    if not all(passed):
        raise SystemExit(1)


def run_shadow(postgres_dsn: str, rounds: int) -> None:
    """Copies of vision-classify and recsys-rank with and without a shadow (shadow.py); no vLLM."""
    cfg = _config(postgres_dsn, vision=True, recsys=True, vllm=False)
    cfg.catalog_overlays.append(shadow.write_overlay(cfg.state_dir / "catalog-shadow-bench.json"))
    _on_stack(cfg, lambda stack: shadow.run(stack, rounds))


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
