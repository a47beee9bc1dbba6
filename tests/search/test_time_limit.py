"""Studies bounded by time (``search.time``): the run ends within its limit plus one candidate, re-scored."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from search import load_config
from search.cli import main
from storage import StudyStore
from tests.search.conftest import ConfigMaker

LIMIT_S = 40.0


def test_a_timed_study_ends_within_its_limit_plus_one_candidate_with_its_rescoring(
    make_config: ConfigMaker, capsys: pytest.CaptureFixture
) -> None:
    timed = {"evaluate__finetune_steps": 20, "evaluate__rescore_top": 2, "evaluate__rescore_steps": 60}
    cfg = make_config(search__candidates=500, search__time=f"{LIMIT_S:.0f}s", **timed)
    started = time.monotonic()
    assert main(["run", str(cfg), "--quiet"]) == 0
    wall = time.monotonic() - started
    err = capsys.readouterr().err
    store = StudyStore(load_config(cfg).storage.url)
    info = store.study("t")
    rows = store.candidates(info.id)
    longest = max([r.seconds or 0.0 for r in rows], default=0.0)
    assert rows, err
    assert 1 <= len(rows) < 500 and all(r.status == "COMPLETE" for r in rows)  # a loaded machine fits fewer
    assert wall <= LIMIT_S + longest, (wall, longest)
    assert info.stopped is not None and info.stopped.startswith("stopped on time: the 40s limit leaves")
    assert f"{len(rows)} of 500 candidates evaluated" in info.stopped
    assert info.stopped in " ".join(err.split())  # the terminal says it too (rich wraps the line)
    rescored = [r for r in rows if r.top_rung == 1]  # one rung of 20 steps, then the re-scoring rung
    assert len(rescored) == min(2, len(rows)) and all(r.rungs[-1][0] == 60 for r in rescored)

    more = make_config("more", search__candidates=len(rows) + 1, **timed)  # the same study, completed
    assert main(["run", str(more), "--quiet"]) == 0
    assert store.study("t").stopped is None and store.count(info.id) == len(rows) + 1


@pytest.mark.parametrize("value", ["abc", "30x", "0m", "-5m", "1h1h"])
def test_a_bad_time_is_a_one_line_error(existing: Path, value: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["run", str(existing), "--search.time", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and repr(value) in err[0] and '"30m"' in err[0], err
