"""Per-image scores beside every candidate's weights, and ties with the pick marked (``storage._samples``)."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from rich.console import Console

from search import load_config
from search.cli import main
from search.cli._tables import front_table
from storage import (
    CandidateRow,
    StudyStore,
    best_within_cap,
    candidates_frame,
    load_sample_scores,
    paired_difference,
    pick_within_cap,
    save_sample_scores,
    scores_path,
    ties,
)
from tests.search.conftest import ConfigMaker


def test_a_paired_difference_is_the_mean_of_per_image_differences(tmp_path) -> None:
    rng = np.random.default_rng(0)
    a_right, b_right = rng.random(500) < 0.9, rng.random(500) < 0.85
    a_loss, b_loss = rng.random(500).astype(np.float32), rng.random(500).astype(np.float32)
    weights = tmp_path / "7-abc.safetensors"
    assert save_sample_scores(weights, a_right, a_loss) == scores_path(weights) == tmp_path / "7-abc.scores.safetensors"
    a = load_sample_scores(weights)
    assert a is not None and np.array_equal(a["correct"], a_right.astype(float))
    b = {"correct": b_right.astype(float), "loss": b_loss.astype(float)}
    d = a_right.astype(float) - b_right.astype(float)
    acc = paired_difference(a, b)
    assert (
        acc is not None
        and acc.diff == pytest.approx(d.mean())
        and acc.se == pytest.approx(d.std(ddof=1) / math.sqrt(500))
    )
    loss = paired_difference(a, b, "loss")  # lower is better: a positive difference means a's loss is lower
    assert loss is not None and loss.diff == pytest.approx(float((b_loss - a_loss).mean()), rel=1e-6)
    assert paired_difference(a, {"correct": b["correct"][:10], "loss": b["loss"][:10]}) is None  # other images
    assert load_sample_scores(tmp_path / "none.safetensors") is None
    scores_path(weights).write_bytes(b"torn")  # a damaged file is read as none, never an error
    assert load_sample_scores(weights) is None


def test_a_study_keeps_per_image_scores_and_marks_ties_with_its_pick(make_config: ConfigMaker) -> None:
    cfg = make_config(search__candidates=5)
    assert main(["run", str(cfg), "--quiet"]) == 0
    store = StudyStore(load_config(cfg).storage.url)
    info = store.study("t")
    rows = [r for r in store.candidates(info.id) if r.status == "COMPLETE"]
    for r in rows:  # the scores beside the weights are those the stored accuracy and loss average
        kept = load_sample_scores(r.artifact)
        assert kept is not None and kept["correct"].mean() == r.accuracy
        assert kept["loss"].mean() == pytest.approx(
            -(r.score_after(r.top_steps, "loss") or 0.0), rel=1e-5
        )  # minus the loss
    best = best_within_cap(rows)
    assert best is not None
    others = [r for r in rows if r.id != best.id]
    twin, far = others[0], others[1]
    shutil.copyfile(scores_path(best.artifact), scores_path(twin.artifact))  # the same answers: a tie
    n = len(load_sample_scores(best.artifact)["correct"])
    save_sample_scores(far.artifact, np.zeros(n, dtype=bool), np.full(n, 9.0))  # all wrong: no tie
    tied = ties(rows, best)
    assert twin.id in tied and far.id not in tied and tied[twin.id].diff == 0.0
    pick = pick_within_cap(rows)  # no winner inside the noise: the cheaper of the two tied plans is the pick
    assert pick is not None and pick.best.id == best.id and set(pick.tied) == set(tied)
    pool = [best, *(r for r in rows if r.id in tied)]  # a small validation split: others may tie too
    cheaper = min(pool, key=lambda r: (r.macs, r.bytes, r.params))
    assert pick.row.id == cheaper.id and pick.cheaper == (cheaper is not best)
    frame = candidates_frame(store, "t").set_index("candidate")
    assert frame.loc[cheaper.id, "pick"] == "*" and frame.loc[far.id, "pick"] == ""
    assert all(frame.loc[r.id, "pick"] == "≈" for r in pool if r is not cheaper)
    console = Console(width=200, record=True)
    console.print(front_table("front", rows, info.base_cost))
    text = " ".join(console.export_text().split())
    assert f"{twin.trial_number if twin is not cheaper else best.trial_number} ≈" in text
    assert f"{cheaper.trial_number} *" in text
    if pick.cheaper:
        assert f"* the cheapest plan tied with the best-scored (trial {best.trial_number}, ≈)" in text
    else:
        assert "≈ tied with *" in text


def _row(tmp_path, id_: int, macs: float, correct: np.ndarray, rung: int = 1) -> CandidateRow:
    """A stored-like candidate at ``rung`` whose per-image answers are ``correct``."""
    weights = tmp_path / f"{id_}.safetensors"
    save_sample_scores(weights, correct, np.where(correct, 0.1, 2.0))
    return CandidateRow(
        id=id_, trial_number=id_, plan="{}", plan_hash=str(id_), status="COMPLETE", accuracy=float(correct.mean()),
        macs=macs, params=macs / 10, bytes=macs / 2.5, latency_ms=None, seconds=1.0, error=None, artifact=str(weights),
        rung=rung, rungs=[[50, float(correct.mean()), 1.0]] * (rung + 1),
    )  # fmt: skip


def test_the_pick_is_the_cheapest_plan_within_the_noise_of_the_best_scored(tmp_path) -> None:
    rng = np.random.default_rng(1)
    answers = rng.random(1000) < 0.9
    best = _row(tmp_path, 1, 500.0, answers)
    near = answers.copy()
    near[np.flatnonzero(answers)[:3]] = False  # three images fewer: 0.3 points, inside the noise
    cheap_tied = _row(tmp_path, 2, 400.0, near)
    cheaper_far = _row(tmp_path, 3, 300.0, answers & (rng.random(1000) < 0.8))  # 18 points worse: not tied
    dearer_tied = _row(tmp_path, 4, 600.0, near)
    pick = pick_within_cap([best, cheap_tied, cheaper_far, dearer_tied])
    assert pick is not None and pick.best.id == 1 and set(pick.tied) == {2, 4}
    assert pick.row.id == 2 and pick.cheaper  # the cheapest of the tied, never the cheaper plan outside the noise
    assert pick.tied[2].diff == pytest.approx(0.003)
    lower_rung = _row(tmp_path, 5, 100.0, answers, rung=0)  # another rung: other images, never compared
    pick = pick_within_cap([best, dearer_tied, lower_rung])
    assert pick is not None and pick.row.id == 1 and not pick.cheaper and set(pick.tied) == {4}
    scores_path(cheap_tied.artifact).unlink()  # no per-image scores: nothing is tied with it
    pick = pick_within_cap([best, cheap_tied])
    assert pick is not None and pick.row.id == 1 and pick.tied == {}
    assert pick_within_cap([]) is None
