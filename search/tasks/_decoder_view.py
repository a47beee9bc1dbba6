"""How a language-model study's candidates read: a plan in a few words, and the front as a terminal table."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table

    from storage import CandidateRow, Pick, StudyRecord, StudyStore

__all__ = ["best_scored", "decoder_front_table", "front_by_memory", "pick", "pick_with_ties", "plan_summary"]


def front_by_memory(store: StudyStore, study_id: int) -> list[CandidateRow]:
    """A decoder study's Pareto front, smallest memory first (how every view lists it)."""
    return sorted(store.front(study_id), key=lambda r: (r.memory or 0.0, r.id))


def best_scored(rows: Sequence[CandidateRow]) -> CandidateRow | None:
    """The lowest validation perplexity among the candidates recovered longest (a 40-step score never beats a
    200-step one, as :func:`storage.best_within_cap` for accuracy); every candidate is within the budget."""
    scored = [r for r in rows if r.perplexity is not None]
    return min(scored, key=lambda r: (-r.top_rung, r.perplexity, r.id), default=None)


def pick_with_ties(rows: Sequence[CandidateRow]) -> Pick | None:
    """The study's pick among ``rows`` (the front), no winner declared inside the noise: of the best-scored
    (:func:`best_scored`) and the candidates at its rung whose per-window validation losses differ from its own
    by under two paired standard errors (:func:`storage.ties`), the one of least memory."""
    from storage import Pick, ties

    best = best_scored(rows)
    if best is None:
        return None
    tied = ties(rows, best, "loss")
    row = min([best, *(r for r in rows if r.id in tied)], key=lambda r: (r.memory or math.inf, r.id))
    return Pick(row=row, best=best, tied=tied)


def pick(rows: Sequence[CandidateRow]) -> CandidateRow | None:
    """The candidate :func:`pick_with_ties` picks (``None`` for no scored candidate)."""
    chosen = pick_with_ties(rows)
    return chosen.row if chosen is not None else None


def plan_summary(plan_json: str, groups: dict[str, int]) -> str:
    """A decoder plan in a few words: layers dropped, and the range of MLP channels and key-value groups the
    kept layers keep (``groups``: each group's full count, as the study stored it)."""
    from spaces.decoder import kept_count

    data = json.loads(plan_json)
    prune: dict[str, float] = data.get("prune", {})
    dropped = set(data.get("depth", {}))
    parts = [f"{len(dropped)} of {len(groups) // 2} layers dropped"] if dropped else []
    for kind, label in (("mlp", "MLP channels"), ("attn", "KV groups")):
        kept = [(kept_count(n, prune.get(g, 0.0)), n) for g, n in groups.items()
                if g.endswith("." + kind) and g.rsplit(".", 1)[0] not in dropped]  # fmt: skip
        if kept:
            lo, hi = min(k for k, _ in kept), max(k for k, _ in kept)
            full = max(n for _, n in kept)
            parts.append(f"{label} {lo}-{hi} of {full}" if lo != hi else f"{label} {lo} of {full}")
    bits: dict[str, int] = data.get("bits", {})
    for b in sorted(set(bits.values()), reverse=True):
        parts.append(f"{sum(v == b for v in bits.values())} layer(s) at {b} bits")
    rank: dict[str, float] = data.get("rank", {})
    if rank:  # shares of full rank; a projection at or above its break-even rank stays dense
        method = ",".join(sorted(set(data.get("method", {}).values()) or {"svd"}))
        parts.append(f"rank {min(rank.values()):.2f}-{max(rank.values()):.2f} of full on {len(rank)} groups ({method})")
    return "; ".join(parts)


def decoder_front_table(
    title: str, rows: Sequence[CandidateRow], study: StudyRecord, groups: dict[str, int] | None = None
) -> Table:
    """The front as a table: trial, validation perplexity and the recovery steps it was measured after, memory
    and weights, plan; the study's pick (:func:`pick`) starred."""
    from rich.table import Table

    dense_memory, dense_ppl = float(study.base_cost["memory"]), study.space_options.get("dense")
    groups = groups if groups is not None else study.space_options.get("groups", {})
    chosen = pick_with_ties(rows)
    table = Table(title=title, caption=_caption(dense_ppl, chosen), caption_justify="left")
    speed = any(_tps(r) is not None for r in rows)  # evaluate.speed: the latency model's predictions
    for col in ("trial", "val ppl", "steps", "memory %", "weights MB", *(("decode tok/s",) if speed else ()), "plan"):
        table.add_column(col, justify="left" if col == "plan" else "right")
    for r in rows:
        tps = _tps(r)
        table.add_row(
            f"{r.trial_number}{_mark(r, chosen)}",
            f"{r.perplexity:.3f}" if r.perplexity is not None else "-",
            str(r.top_steps) if r.top_steps is not None else "-",
            f"{100 * (r.memory or 0) / dense_memory:.1f}%",
            f"{(r.bytes or 0) / 1e6:.2f}",
            *((f"{tps[1]:,.0f}" if tps else "-",) if speed else ()),
            plan_summary(r.plan, groups),
        )
    return table


def _tps(row: CandidateRow) -> tuple[float, float] | None:
    """The prefill and decode tokens per second the study's latency model predicts for ``row`` (None: none)."""
    d = row.device_latency or {}
    return None if d.get("decode_tps") is None else (float(d["prefill_tps"]), float(d["decode_tps"]))


def _mark(row: CandidateRow, chosen: Pick | None) -> str:
    """`` *`` for the pick, `` ≈`` for a candidate tied with the best-scored one (or the best-scored itself when
    a cheaper tied plan was picked), else nothing."""
    if chosen is None:
        return ""
    if row.id == chosen.row.id:
        return " *"
    return " ≈" if row.id in chosen.tied or row.id == chosen.best.id else ""


def _caption(dense_ppl: float | None, chosen: Pick | None = None) -> str:
    dense = f"; the dense model: {dense_ppl:.3f}" if dense_ppl is not None else ""
    how = "the lowest validation perplexity among the candidates recovered longest (steps)"
    if chosen is not None and chosen.cheaper:
        how = f"the least memory within the noise of the lowest perplexity (trial {chosen.best.trial_number}, ≈)"
    return (
        f"* the pick: {how}; ≈ within its noise (under 2 paired standard errors on the same validation windows); "
        f"memory: weights plus KV cache at the budget's context, a share of the dense model's{dense}"
    )
