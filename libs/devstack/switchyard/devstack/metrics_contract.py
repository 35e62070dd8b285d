"""docs/metrics.md as data, and the checks the rules and dashboards tests share: which metric names a
PromQL expression reads, whether promtool accepts expressions, where promtool is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import yaml  # type: ignore[import-untyped]

SETUP_HINT: Final = "run ./switchyard setup (it installs the Debian package `prometheus`, which has promtool)"

# Backticked names in docs/metrics.md that are metrics: Switchyard's, the third parties' it lists,
# Prometheus' own, and recording rules (level:metric:operations).
_CONTRACT_NAME = re.compile(
    r"^(?:(?:switchyard_|temporal_|llamacpp:|vllm:|nv_inference_|DCGM_FI_)[A-Za-z0-9_:]+|up|ALERTS|[a-z_]+:[a-z_]+:[a-z0-9_]+)$"
)

# PromQL words that are not metric names.
_FUNCTIONS: Final = frozenset("""
abs absent absent_over_time avg_over_time ceil changes clamp clamp_max clamp_min count_over_time
day_of_month day_of_week day_of_year days_in_month delta deriv exp floor histogram_quantile
holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2
max_over_time min_over_time minute month predict_linear present_over_time quantile_over_time rate
resets round scalar sgn sort sort_desc sqrt stddev_over_time stdvar_over_time sum_over_time time
timestamp vector year
sum min max avg count stddev stdvar topk bottomk quantile count_values group
and or unless by without on ignoring group_left group_right offset bool inf nan
""".split())
_HISTOGRAM_SUFFIXES: Final = ("_bucket", "_sum", "_count")


def contract_metrics(markdown: str) -> set[str]:
    """Every metric name docs/metrics.md declares (in backticks)."""
    return {name for name in re.findall(r"`([^`\s]+)`", markdown) if _CONTRACT_NAME.match(name)}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names, functions and keywords left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range and subquery selectors
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)  # label lists
    return {w for w in re.findall(r"(?<![\w:.$])([A-Za-z_:][A-Za-z0-9_:]*)", s) if w not in _FUNCTIONS}


def unknown_metrics(names: Iterable[str], contract: set[str]) -> set[str]:
    """Names neither in the contract nor a histogram series (_bucket/_sum/_count) of one in it."""
    out = set()
    for n in names:
        base = next((n[: -len(s)] for s in _HISTOGRAM_SUFFIXES if n.endswith(s)), None)
        if n not in contract and base not in contract:
            out.add(n)
    return out


def find_promtool() -> str | None:
    for c in (os.environ.get("SWITCHYARD_PROMTOOL_BIN"), shutil.which("promtool"), "/usr/bin/promtool"):
        if c and os.path.isfile(c):
            return c
    return None


def check_expressions(promtool: str, exprs: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` on the expressions, each wrapped as a recording rule (so each is parsed)."""
    rules = {"groups": [{"name": "expressions", "rules": [{"record": f"check:expr:{i}", "expr": e, "labels": {"source": src}}
                                                         for i, (src, e) in enumerate(exprs.items())]}]}
    path = workdir / "expressions.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
