"""How a candidate's answer is compared with the primary's (docs/shadow.md); pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from rapidfuzz.distance import LCSseq

T = TypeVar("T")


def topk_agreement(primary: Sequence[Sequence[T]], candidate: Sequence[Sequence[T]], k: int) -> tuple[float, float]:
    """(top-1 agreement, top-k overlap), each the mean over rows: whether the first entries are
    equal, and the share of the primary's first ``k`` the candidate's first ``k`` also hold."""
    if len(primary) != len(candidate) or not primary:
        raise ValueError(f"the answers have {len(primary)} and {len(candidate)} rows")
    top1 = overlap = 0.0
    for p, c in zip(primary, candidate, strict=True):
        top1 += float(bool(p) and bool(c) and p[0] == c[0])
        want = list(p[:k])
        overlap += len(set(want) & set(c[:k])) / len(want) if want else float(not c)
    return top1 / len(primary), overlap / len(primary)


def rouge_l(reference: str, candidate: str) -> float:
    """ROUGE-L F1 over whitespace-separated words: the longest common subsequence of words (computed
    by rapidfuzz) as precision over the candidate and recall over the reference; 1.0 for two
    empty texts."""
    ref, cand = reference.split(), candidate.split()
    if not ref or not cand:
        return float(ref == cand)
    lcs = LCSseq.similarity(ref, cand)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)
