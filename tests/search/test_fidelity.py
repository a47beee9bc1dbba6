"""Issue 11 in real studies: cost levels between floor and cap, rungs, finalize and the test split."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from search import Search, finalize, load_config, load_exported, promotes
from search.cli import main
from search.study._rungs import promotion_order, rivals
from spaces import Status
from storage import CandidateRow, load_sample_scores, paired_difference, save_sample_scores
from tests.search.conftest import write_config

RUNGS = {"evaluate__rungs": [3, 6], "evaluate__reduction_factor": 2, "evaluate__finetune_steps": None}


def _run(root: Path, artifacts: Path, **overrides: object) -> Search:
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(write_config(root, artifacts, **{**RUNGS, **overrides}))
    s = Search(cfg).prepare()
    s.run()
    return s


def _promotes(rows: list[CandidateRow], points: list[list[float]], i: int, score: str) -> bool:
    """The promotion rule replayed for ``rows[i]`` at rung 0 (3 steps, reduction factor 2): among the first
    half, or tied with a better-scored promoted candidate on the rung-0 per-image scores kept beside its weights."""
    mine = load_sample_scores(rows[i].artifact, 3)  # type: ignore[arg-type]
    assert mine is not None and len(mine["correct"]) == len(load_sample_scores(rows[i].artifact)["correct"])  # type: ignore[arg-type,index]
    tied = any(
        paired_difference(load_sample_scores(rows[j].artifact, 3), mine, score).tied  # type: ignore[arg-type,union-attr]
        for j in rivals(points, i, reduction_factor=2)
    )
    return promotes(points, i, reduction_factor=2) or tied


def test_candidates_spread_from_floor_to_cap_and_rungs_promote_by_the_rule(tmp_path: Path, artifacts: Path) -> None:
    s = _run(tmp_path, artifacts, search__candidates=9, search__floor="12.5%")
    p = s.prepared
    rows = p.store.candidates(p.study_id)
    assert len(rows) == 9 and all(r.status is Status.COMPLETE for r in rows)
    base = p.base_cost.macs
    shares = [(r.macs or 0.0) / base for r in rows]
    assert max(shares) <= 0.5 and min(shares) >= 0.125 * 0.97  # every candidate meets the cap, none below the floor
    assert max(shares) / min(shares) >= 3.0  # a curve, not a point
    assert s.seed_levels() == pytest.approx([1.0, 0.5, 0.25])  # fractions of the cap: 50 %, 25 %, 12.5 % of the MACs
    # every seed plan at the cap, at the geometric middle and at the floor (search.seed_levels = 3), cap first
    assert [r.kind for r in rows] == ["allocator", "uniform", "global"] + ["allocator-floor", "uniform", "global"] * 2
    for i, level in enumerate((0.5, 0.25, 0.125)):
        assert shares[3 * i : 3 * i + 3] == pytest.approx([level] * 3, rel=0.05), (level, shares)
    # one worker finishes rung 0 of the candidates in id order: replay the promotion rule on the stored rung-0
    # points, and its ties on the rung-0 per-image scores kept beside each candidate's weights
    for i, row in enumerate(rows):
        points = [[-(r.accuracy_at(0) or 0.0), r.macs or 0.0] for r in rows[: i + 1]]
        assert (row.rung == 1) == _promotes(rows, points, i, "accuracy"), row.id
        assert [r[0] for r in row.rungs or []] == [3, 6][: (row.rung or 0) + 1]
        assert row.accuracy == row.rungs[-1][1]  # type: ignore[index]

    # the front, recomputed by brute force: a dominates b only where a was measured at b's top rung
    def beats(a: object, b: object) -> bool:
        acc_a, acc_b = a.accuracy_at(b.rung), b.accuracy  # type: ignore[attr-defined]
        return acc_a is not None and acc_a >= acc_b and a.macs <= b.macs and (acc_a > acc_b or a.macs < b.macs)  # type: ignore[attr-defined]

    brute = {b.id for b in rows if not any(beats(a, b) for a in rows if a.id != b.id)}
    assert {r.id for r in p.store.front(p.study_id)} == brute


def test_a_candidate_below_the_cut_goes_on_when_a_promoted_one_beats_it_only_inside_the_noise(
    tmp_path: Path, artifacts: Path
) -> None:
    s = _run(tmp_path, artifacts, search__candidates=6)
    p = s.prepared
    points, rows, _ = s.runner._rung_points(-1, 3)
    order = promotion_order(points)
    below = order[3]  # 6 candidates, reduction factor 2: the first 3 go on, the next 3 may be tied with them
    rival = rows[order[0]]  # promoted, and it scores best
    assert points[order[0]][0] <= points[below][0]
    n = 100
    mine = np.zeros(n, dtype=bool)
    mine[:60] = True  # 60 of 100 images right
    near, far = mine.copy(), np.ones(n, dtype=bool)
    near[60] = True  # one image more: +1 point, paired standard error 1 point, within two of them
    for theirs, expected in ((near, True), (far, False)):
        save_sample_scores(rival.artifact, theirs, np.zeros(n), rungs={3: (theirs, np.where(theirs, 0.1, 2.0))})  # type: ignore[arg-type]
        samples = (mine, np.where(mine, 0.1, 2.0))
        assert s.runner.promoted(rows[below].id, 0, samples) is expected
    save_sample_scores(rival.artifact, near, np.zeros(n), rungs={3: (near, np.where(near, 0.1, 2.0))})  # type: ignore[arg-type]
    assert not s.runner.promoted(rows[below].id, 0, None)  # no per-image scores: the plain rule
    p.config.evaluate.promote_ties = False
    assert not s.runner.promoted(rows[below].id, 0, samples)


def test_rivals_are_the_better_scored_promoted_points_of_a_candidate_just_below_the_cut() -> None:
    # minus the score, then MACs; 9 points, reduction factor 3: 3 go on, the next 3 may be tied with them
    points = [[-0.90, 5.0], [-0.80, 4.0], [-0.70, 3.0], [-0.85, 5.0], [-0.75, 4.5], [-0.60, 3.5]]
    points += [[-0.50, 4.9], [-0.40, 4.8], [-0.30, 4.7]]
    order = promotion_order(points)
    assert sorted(order[:3]) == [0, 1, 2] and sorted(order[3:6]) == [3, 4, 5]
    assert rivals(points, 3, 3) == [0]  # only candidate 0 scores better than 0.85
    assert sorted(rivals(points, 4, 3)) == [0, 1]
    assert sorted(rivals(points, 5, 3)) == [0, 1, 2]
    assert rivals(points, 6, 3) == []  # beyond twice the share: the plain rule
    assert rivals(points, 0, 3) == []  # promoted anyway


def test_floor_cap_puts_every_candidate_at_the_cap(tmp_path: Path, artifacts: Path) -> None:
    s = _run(tmp_path, artifacts, search__candidates=4, search__floor="cap")
    p = s.prepared
    shares = [(r.macs or 0.0) / p.base_cost.macs for r in p.store.candidates(p.study_id)]
    assert all(0.5 * 0.95 <= x <= 0.5 for x in shares), shares
    assert "level" not in p.dists


def test_test_labels_never_influence_what_the_search_selects(tmp_path: Path, artifacts: Path) -> None:
    seen = {}
    for name in ("digits_three", "digits_wrong_test_labels"):
        s = _run(tmp_path / name, artifacts, data__spec=f"tests.search.datafactories:{name}", search__candidates=5)
        p = s.prepared
        rows = p.store.candidates(p.study_id)
        front = [r.trial_number for r in p.store.front(p.study_id)]
        done = finalize(s.cfg, front=True, steps=3)
        seen[name] = ([(r.plan_hash, r.accuracy, r.rung) for r in rows], front, [f.test_accuracy for f in done])
    clean, wrong = seen["digits_three"], seen["digits_wrong_test_labels"]
    assert clean[:2] == wrong[:2]  # the same plans, validation accuracies, rungs and front
    # the test split is measured (after finalize), with the labels it has: wrong labels score near zero
    assert None not in clean[2] and None not in wrong[2]  # an accuracy of 0.0 is a score, not a missing one
    assert all(c > w + 0.2 for c, w in zip(clean[2], wrong[2], strict=True)), (clean[2], wrong[2])


def test_finalize_stores_test_accuracy_and_exports_the_finalized_model(
    tmp_path: Path, artifacts: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    from evaluators import load_data

    config = write_config(tmp_path, artifacts, **RUNGS, search__candidates=3)
    assert main(["run", str(config), "--quiet"]) == 0
    s = Search(load_config(config)).prepare()
    p = s.prepared
    trial = p.store.front(p.study_id)[0].trial_number  # the front shows the test accuracy of its own members
    ship = str(tmp_path / "ship")
    assert main(["finalize", str(config), "--trial", str(trial), "--steps", "5", "--out", ship]) == 0
    out = capsys.readouterr().out
    assert "test acc" in out
    row = p.store.candidate(p.study_id, trial_number=trial)
    assert row.final is not None and row.final.steps == 5 and row.test_accuracy == row.final.test_accuracy
    model = load_exported(tmp_path / "ship" / f"trial-{trial}").eval()
    data = load_data("digits")
    assert data.test is not None
    x, y = data.test.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(row.test_accuracy, abs=1e-6)
    assert main(["front", str(config)]) == 0
    assert f"{row.test_accuracy:.4f}" in capsys.readouterr().out


def test_a_candidate_failing_above_rung_0_keeps_its_last_rung(tmp_path: Path, artifacts: Path) -> None:
    from evaluators import Evaluator, Metrics
    from search.preparation._prepare import default_evaluator

    class FailsOnRung1(Evaluator):
        def __init__(self, inner: Evaluator) -> None:
            # the models themselves are held, not their ids: a freed candidate's id can be reused by the next
            self.inner, self.seen = inner, []

        def evaluate(self, model, context):  # type: ignore[no-untyped-def]
            if any(m is model for m in self.seen):
                return Metrics(status=Status.FAIL, reason="loss became nan at step 1")
            self.seen.append(model)
            return self.inner.evaluate(model, context)

    cfg = load_config(write_config(tmp_path, artifacts, **RUNGS, search__candidates=3))
    s = Search(cfg, evaluator=FailsOnRung1(default_evaluator(cfg))).prepare()
    s.run()
    p = s.prepared
    rows = p.store.candidates(p.study_id)
    assert all(r.status is Status.COMPLETE and r.rung == 0 and r.accuracy == r.accuracy_at(0) for r in rows)
    assert rows[0].error == "rung 1 failed (loss became nan at step 1); kept rung 0"  # the first always goes on
    assert p.store.front(p.study_id)


def test_the_best_at_the_top_rung_are_rescored_as_a_rung_of_their_own_once(tmp_path: Path, artifacts: Path) -> None:
    import numpy as np

    from storage import best_within_cap, file_sha256, load_sample_scores, save_sample_scores, scores_path

    s = _run(tmp_path, artifacts, search__candidates=6)  # no re-scoring yet
    rows = s.prepared.store.candidates(s.prepared.study_id)
    at_top = [r for r in rows if (r.rung or 0) >= 1]  # what reached the top rung (6 steps)
    ranked = sorted(at_top, key=lambda r: (-(r.accuracy_at(1) or 0.0), r.macs or 0.0, r.id))
    # how many reach the top rung depends on the order the scores arrive in (2 of 6 on a 2-core AMD EPYC,
    # 2026-12-07; 3 or more on CI): two are what the tie needs; a third, where there is one, must stay out
    # (tests/search/test_ties.py checks the untied case on its own)
    assert len(ranked) >= 2
    # the second is made to answer as the first does (a tie with the k-th, k = 1), the rest wrong on every image
    first = load_sample_scores(str(ranked[0].artifact))
    assert first is not None
    shutil.copyfile(scores_path(str(ranked[0].artifact)), scores_path(str(ranked[1].artifact)))
    for r in ranked[2:]:
        save_sample_scores(str(r.artifact), np.zeros(len(first["correct"]), dtype=bool), first["loss"] + 9)
    s = _run(tmp_path, artifacts, search__candidates=6, evaluate__rescore_top=1, evaluate__rescore_steps=12)
    p = s.prepared
    rows = p.store.candidates(p.study_id)
    rescored = [r for r in rows if r.rung == 2]
    # the most accurate at the top rung, and the one it does not beat beyond its noise
    assert {r.id for r in rescored} == {r.id for r in ranked[:2]}
    for r in rescored:
        assert [x[0] for x in r.rungs or []] == [3, 6, 12] and r.accuracy == r.rungs[-1][1]  # type: ignore[index]
        assert r.artifact and Path(r.artifact).name.startswith(f"{r.id}-12steps-")
        assert file_sha256(r.artifact) == r.weights_sha256
    best = best_within_cap(p.store.front(p.study_id))
    assert best is not None and best.id in {r.id for r in rescored}  # "best" is one trained longest
    s.run()  # the study is complete: a rerun re-scores nothing again
    again = p.store.candidates(p.study_id)
    assert [(r.id, r.rungs, r.artifact) for r in again] == [(r.id, r.rungs, r.artifact) for r in rows]
    weights = [x.name for x in p.artifacts.glob("*steps-*.safetensors") if not x.name.endswith(".scores.safetensors")]
    assert sorted(weights) == sorted(Path(r.artifact).name for r in rescored if r.artifact)  # no other worker's file
    assert all(scores_path(r.artifact).is_file() for r in rescored if r.artifact)  # their per-image scores beside


def test_scores_are_paired_two_evaluations_of_one_plan_score_the_same(tmp_path: Path, artifacts: Path) -> None:
    """Every candidate is scored on the same validation subset after the same fine-tune batches (the rung's seed),
    so two candidates differ by their plans, not by their draws: the same plan twice scores exactly the same."""
    cfg = load_config(write_config(tmp_path, artifacts, **RUNGS, evaluate__max_val_samples=100))
    s = Search(cfg).prepare()
    p = s.prepared
    plan = p.uniform
    first, second = (s.runner._rung(p.space.apply(plan), 0, 3, 0, None) for _ in range(2))
    assert first.status is Status.COMPLETE and first.accuracy is not None and first.loss is not None
    assert (first.accuracy, first.loss, first.history) == (second.accuracy, second.loss, second.history)
    other = s.runner._rung(p.space.apply(p.space.global_plan(p.budget)), 0, 3, 0, None)
    assert other.loss != first.loss  # another plan: another score, on the same images


def test_a_loss_scored_study_promotes_by_validation_loss(tmp_path: Path, artifacts: Path) -> None:
    s = _run(tmp_path, artifacts, search__candidates=6, evaluate__score="loss")
    rows = s.prepared.store.candidates(s.prepared.study_id)
    assert all(len(entry) == 3 and entry[2] > 0 for r in rows for entry in r.rungs or [])  # steps, accuracy, loss
    for i, row in enumerate(rows):  # the promotions, replayed on (minus the loss, MACs) at rung 0
        points = [[-(r.score_after(3, "loss") or 0.0), r.macs or 0.0] for r in rows[: i + 1]]
        assert (row.rung == 1) == _promotes(rows, points, i, "loss"), row.id
    assert rows[0].score_after(3, "loss") == -rows[0].rungs[0][2]  # type: ignore[index]
    assert rows[0].score_after(3, "accuracy") == rows[0].accuracy_at(0)
    from storage import best_within_cap

    assert s.prepared.store.study(s.prepared.study).spec.score == "loss"  # what the CLI's front and status pick by
    best = best_within_cap(rows, "loss")
    top = [r for r in rows if best is not None and r.top_rung == best.top_rung]
    assert best is not None and best.id == min(top, key=lambda r: r.rungs[-1][2]).id  # type: ignore[index]


def test_a_kl_scored_study_holds_out_the_teacher_s_pool_and_ranks_by_the_divergence(
    tmp_path: Path, artifacts: Path
) -> None:
    from evaluators import load_data, load_weights
    from spaces import Plan
    from storage import best_within_cap

    s = _run(tmp_path, artifacts, search__candidates=6, evaluate__score="kl", evaluate__rescore_top=1)
    p = s.prepared
    train = len(load_data("digits").train)  # type: ignore[arg-type]
    assert p.pool is not None and len(p.pool) == train // 5 and len(p.data.train) == train - len(p.pool)  # type: ignore[arg-type]
    rows = p.store.candidates(p.study_id)
    assert all(len(entry) == 4 and entry[3] > 0 for r in rows for entry in r.rungs or [])  # steps, acc, loss, kl
    for i, row in enumerate(rows):  # the promotions, replayed on (minus the KL, MACs) at rung 0
        points = [[-(r.score_after(3, "kl") or 0.0), r.macs or 0.0] for r in rows[: i + 1]]
        assert ((row.rung or 0) >= 1) == _promotes(rows, points, i, "kl"), row.id  # rung 2: re-scored
    for row in rows:  # the stored divergence is the stored weights' on the pool, image by image in the scores file
        model = load_weights(p.space.apply(Plan.from_json(row.plan)), str(row.artifact)).to(p.device)
        kl = p.pool.score(model)["kl"]
        assert kl.value == pytest.approx(row.rungs[-1][3], rel=1e-5)  # type: ignore[index]
        assert load_sample_scores(row.artifact)["kl"] == pytest.approx(kl.per_image, abs=1e-6)  # type: ignore[arg-type,index]
    best = best_within_cap(p.store.front(p.study_id), "kl")
    top = [r for r in rows if best is not None and r.top_rung == best.top_rung]
    assert best is not None and best.id == min(top, key=lambda r: r.rungs[-1][3]).id  # type: ignore[index]
    assert p.store.study(p.study).spec.score == "kl"


def test_versatile_filters_trained_block_wise_are_searched_promoted_and_finalized(
    tmp_path: Path, artifacts: Path
) -> None:
    """The joint space with versatile filters, trained block-wise once per candidate, promoted, then finalized."""
    from evaluators import BlockwiseTraining
    from search.operations._report_data import structure_frame
    from spaces import Plan

    calls: list[bool] = []
    original = BlockwiseTraining.evaluate

    def spy(self: BlockwiseTraining, model, context):  # type: ignore[no-untyped-def]
        calls.append(context.resumed)
        return original(self, model, context)

    overrides = {**RUNGS, "space.rank__method": "versatile", "search__candidates": 4}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(BlockwiseTraining, "evaluate", spy)
        s = _run(tmp_path, artifacts, evaluate__recipe="blockwise", evaluate__blockwise_steps=2, **overrides)
        p = s.prepared
        rows = [r for r in p.store.candidates(p.study_id) if r.status is Status.COMPLETE]
        plans = [Plan.from_json(r.plan) for r in rows]
        assert any(set(plan.method.values()) == {"versatile"} for plan in plans)  # the allocator's seed, at least
        promoted = sum(1 for r in rows if r.rung == 1)
        assert promoted >= 1 and calls.count(False) == len(rows) and calls.count(True) == promoted
        done = finalize(s.cfg, trials=[rows[0].trial_number], steps=3)
    assert done[0].test_accuracy is not None and calls[-1] is False  # finalize trains its fresh model block-wise
    frame = structure_frame(p.space, {"pick": next(plan for plan in plans if plan.method)})
    assert "primary filters" in set(frame["what"])


def test_a_score_of_zero_is_a_score_when_choosing_what_to_rescore() -> None:
    """0.0 (an accuracy of 0, or a loss of 0 under the loss score) ranks as a score; only ``None`` is missing."""
    from search.study._rescore import _missing_last

    scores = [None, -0.5, 0.0, 0.3, -0.0]
    assert sorted(scores, key=_missing_last) == [0.3, 0.0, -0.0, -0.5, None]


def test_finalize_builds_only_the_workers_part_and_writes_nothing_to_prepare_it(existing: Path) -> None:
    """``finalize`` reuses the study's base model, data and space (a Worker); no sampler, no study row written."""
    from search.preparation._prepare import Prepared, Worker, prepare_worker
    from spaces import Plan
    from tests.search.conftest import dump

    db = existing.parent / "study.db"
    before = dump(db)
    w = prepare_worker(load_config(existing))
    assert type(w) is Worker and not isinstance(w, Prepared) and issubclass(Prepared, Worker)
    assert dump(db) == before  # nothing written
    row = w.store.candidate(w.study_id, trial_number=0)
    assert w.space.cost(Plan.from_json(row.plan)).macs == row.macs  # the same space the study costed with
    with pytest.raises(ValueError, match="no study named 'nope'"):
        prepare_worker(load_config(existing, {"search.study": "nope"}))
    assert dump(db) == before
