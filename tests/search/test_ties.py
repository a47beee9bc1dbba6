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


def test_a_study_keeps_per_image_scores_and_marks_ties_with_its_pick(
    make_config: ConfigMaker, capsys: pytest.CaptureFixture[str]
) -> None:
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
    # every view picks on the front, by one rule: the table's star, the report's `*` and status's pick agree
    front = store.front(info.id)
    pick = pick_within_cap(front)
    assert pick is not None and (pick.row.id == pick.best.id or pick.row.id in pick.tied)
    frame = candidates_frame(store, "t").set_index("candidate")
    assert list(frame.index[frame["pick"] == "*"]) == [pick.row.id]
    marked = set(frame.index[frame["pick"] == "≈"])
    assert marked == ({pick.best.id} | set(pick.tied)) - {pick.row.id} and far.id not in marked
    console = Console(width=200, record=True)
    console.print(front_table("front", front, info.base_cost))
    text = " ".join(console.export_text().split())
    assert f"{pick.row.trial_number} *" in text
    if pick.cheaper:
        assert f"* the cheapest plan tied with the best-scored (trial {pick.best.trial_number}, ≈)" in text
    elif pick.tied:
        assert "≈ tied with *" in text
    assert main(["status", str(cfg)]) == 0
    said = capsys.readouterr().out
    assert f"(trial {pick.best.trial_number}," in said
    assert (f"pick: trial {pick.row.trial_number} " in said) == pick.cheaper


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


def test_the_rescoring_rung_takes_the_candidates_the_kth_does_not_beat_beyond_its_noise(tmp_path) -> None:
    from search.study._rescore import _tied_with

    rng = np.random.default_rng(2)
    answers = rng.random(1000) < 0.9
    edge = _row(tmp_path, 1, 500.0, answers)
    near = answers.copy()
    near[np.flatnonzero(answers)[:10]] = False
    near[np.flatnonzero(~answers)[:8]] = True  # 0.2 points below, differing on 18 images: inside the noise
    far = answers & (rng.random(1000) < 0.9)  # about 9 points below: beyond it
    below = [_row(tmp_path, 2, 400.0, far), _row(tmp_path, 3, 450.0, near)]
    assert [r.id for r in _tied_with(edge, below, "accuracy")] == [3]
    assert _tied_with(edge, below[:1], "accuracy") == []


def test_a_tied_plan_that_a_cheaper_better_plan_beats_is_never_the_pick(tmp_path) -> None:
    """Ties are not transitive: P ties with the best-scored, D does not (a steadier difference), yet D is both
    more accurate and cheaper than P. The pick is never P."""
    answers = np.zeros(1000, dtype=bool)
    answers[:900] = True  # the best-scored: 0.900
    p_answers = answers.copy()
    p_answers[:40], p_answers[900:925] = False, True  # 0.885, differing on 65 images: tied (2 SE = 0.016)
    d_answers = answers.copy()
    d_answers[:10] = False  # 0.890, differing on 10 images only: not tied (2 SE = 0.006)
    best, p, d = (
        _row(tmp_path, 1, 100.0, answers),
        _row(tmp_path, 2, 90.0, p_answers),
        _row(tmp_path, 3, 80.0, d_answers),
    )
    pick = pick_within_cap([best, p, d])
    assert pick is not None and set(pick.tied) == {2}  # P is tied, D is not
    assert pick.row.id == 1 and not pick.cheaper  # P is left out: D beats it on the score and every cost
    pick = pick_within_cap([best, p])  # without D, P is the cheapest plan tied with the best-scored
    assert pick is not None and pick.row.id == 2 and pick.cheaper
