"""The SQL study store (SQLAlchemy): studies, candidates, plans, metrics and the Pareto front.

SQLite (WAL, busy timeout) is the embedded default; PostgreSQL serves many workers.
Reports (CSV, Markdown, HTML with plotly) and the queue of submitted studies live here too.

Imports are lazy (PEP 562): ``import storage`` loads neither SQLAlchemy nor
pandas nor plotly (the reports); each name's module is imported when the name is first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces import lazy_exports

if TYPE_CHECKING:
    from storage._figures import ReportExtras, front_figure, public_url
    from storage._html import render_report
    from storage._open import file_sha256, store_error
    from storage._panels import Panel, ReportInput, register_panel
    from storage._pareto import best_within_cap, dominates, exceeds_cap, pareto_front
    from storage._queue import Submissions, SubmissionStatus
    from storage._records import PHASES, FinalResult, PhaseTimes, StudySpec
    from storage._report import candidates_frame, write_report
    from storage._samples import (
        Paired,
        Pick,
        load_sample_scores,
        paired_difference,
        pick_within_cap,
        save_sample_scores,
        scores_path,
        ties,
    )
    from storage._schema import SCHEMA_VERSION, CandidateRow, StudyRecord, SubmissionRecord
    from storage._store import StudyStore
    from storage._store_errors import StoreDamagedError, StoreError, StudyFullError, StudyMismatchError
    from storage._view import candidate_view, latency_check, over_cap_note, plan_summary

__all__ = [
    "PHASES",
    "SCHEMA_VERSION",
    "CandidateRow",
    "FinalResult",
    "Paired",
    "Panel",
    "PhaseTimes",
    "Pick",
    "ReportExtras",
    "ReportInput",
    "StoreDamagedError",
    "StoreError",
    "StudyFullError",
    "StudyMismatchError",
    "StudyRecord",
    "StudySpec",
    "StudyStore",
    "SubmissionRecord",
    "SubmissionStatus",
    "Submissions",
    "best_within_cap",
    "candidate_view",
    "candidates_frame",
    "dominates",
    "exceeds_cap",
    "file_sha256",
    "front_figure",
    "latency_check",
    "load_sample_scores",
    "over_cap_note",
    "paired_difference",
    "pareto_front",
    "pick_within_cap",
    "plan_summary",
    "public_url",
    "register_panel",
    "render_report",
    "save_sample_scores",
    "scores_path",
    "store_error",
    "ties",
    "write_report",
]

_WHERE = {
    "PHASES": "_records",
    "FinalResult": "_records",
    "PhaseTimes": "_records",
    "StudySpec": "_records",
    "Paired": "_samples",
    "Pick": "_samples",
    "pick_within_cap": "_samples",
    "load_sample_scores": "_samples",
    "paired_difference": "_samples",
    "save_sample_scores": "_samples",
    "scores_path": "_samples",
    "ties": "_samples",
    "SCHEMA_VERSION": "_schema",
    "CandidateRow": "_schema",
    "Panel": "_panels",
    "ReportExtras": "_figures",
    "ReportInput": "_panels",
    "SubmissionRecord": "_schema",
    "SubmissionStatus": "_queue",
    "Submissions": "_queue",
    "front_figure": "_figures",
    "public_url": "_figures",
    "register_panel": "_panels",
    "render_report": "_html",
    "StoreDamagedError": "_store_errors",
    "StoreError": "_store_errors",
    "file_sha256": "_open",
    "store_error": "_open",
    "StudyFullError": "_store_errors",
    "StudyMismatchError": "_store_errors",
    "StudyRecord": "_schema",
    "StudyStore": "_store",
    "candidates_frame": "_report",
    "best_within_cap": "_pareto",
    "dominates": "_pareto",
    "exceeds_cap": "_pareto",
    "pareto_front": "_pareto",
    "candidate_view": "_view",
    "latency_check": "_view",
    "over_cap_note": "_view",
    "plan_summary": "_view",
    "write_report": "_report",
}


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
