"""The JSON API: studies, trials (and their exports), figures, submissions (one ``APIRouter``)."""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response

from search.operations._export import export_candidate
from search.service._api_models import (
    FrontFigureOut,
    StudyDetailOut,
    StudyOut,
    SubmissionIn,
    SubmissionOut,
    TrialOut,
    candidate_out,
    study_out,
    submission_out,
    trial_out,
)
from search.service._state import ServiceState, state_of
from search.service._worker import SubmissionError, check_submission
from search.tasks import task_of_study
from spaces import first_line
from storage import candidates_frame, front_figure

__all__ = ["router", "studies"]

router = APIRouter(prefix="/api")
State = Annotated[ServiceState, Depends(state_of)]
_ZIP_DOC = "plan.json, weights.safetensors, model.json: load the unzipped folder with search.load_exported"
_ZIP: dict[int | str, dict[str, Any]] = {200: {"content": {"application/zip": {}}, "description": _ZIP_DOC}}


def studies(state: ServiceState) -> list[StudyOut]:
    """Every study in the store, with its candidates' counts (the API's and the index page's)."""
    out = []
    for name in state.reader.study_names():
        info = state.reader.study(name)
        out.append(study_out(info, state.reader.candidates(info.id), len(state.front_ids(info.id))))
    return out


@router.get("/studies", response_model=list[StudyOut], tags=["studies"])
def list_studies(state: State) -> list[StudyOut]:
    """Every study in the store, with its candidates' counts."""
    return studies(state)


@router.get("/studies/{name}", response_model=StudyDetailOut, tags=["studies"])
def get_study(name: str, state: State) -> StudyDetailOut:
    """A study, its candidates and its Pareto front."""
    info = state.study_or_404(name)
    rows, front = state.reader.candidates(info.id), state.reader.front(info.id)
    ids = {r.id for r in front}
    return StudyDetailOut(
        study=study_out(info, rows, len(front)),
        candidates=[candidate_out(r, ids) for r in rows],
        front=[r.trial_number for r in front if r.trial_number is not None],
    )


@router.get("/studies/{name}/figures/front", response_model=FrontFigureOut, tags=["studies"])
def get_front_figure(name: str, state: State) -> FrontFigureOut:
    """The front's plotly figure, as the study's page draws it (the page polls this while a study runs)."""
    info = state.study_or_404(name)

    def build() -> FrontFigureOut:
        if (task := task_of_study(info)) is not None:  # a language-model study: perplexity against memory
            return FrontFigureOut(candidates=state.reader.count(info.id), figure=task.page(state.reader, info,
                                  plotlyjs="")[1])  # fmt: skip
        df = candidates_frame(state.reader, name)
        return FrontFigureOut(candidates=len(df), figure=json.loads(front_figure(df, info).to_json()))

    return state.cached(name, "front figure", build)


@router.get("/studies/{name}/trials/{n}", response_model=TrialOut, tags=["trials"])
def get_trial(name: str, n: int, state: State) -> TrialOut:
    """One candidate by trial number: its plan, metrics, history and seconds per phase."""
    info, row = state.row_or_404(name, n)
    return trial_out(row, state.front_ids(info.id))


@router.get("/studies/{name}/trials/{n}/export", tags=["trials"], response_class=Response, responses=_ZIP)
def export_trial(name: str, n: int, state: State) -> Response:
    """A COMPLETE candidate as a zip of its export (the same files as `prunetune export`)."""
    info, _ = state.row_or_404(name, n)
    if task_of_study(info) is not None:
        raise HTTPException(409, "a language-model study exports with `prunetune export CONFIG --trial N --out DIR`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            d = export_candidate(state.reader, name, Path(tmp) / "export", trial=n)
        except ValueError as exc:
            raise HTTPException(409, first_line(exc)) from None
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in ("plan.json", "weights.safetensors", "model.json"):
                z.write(d / f, f)
    disposition = f"attachment; filename={quote(name)}-trial-{n}.zip"
    return Response(buf.getvalue(), media_type="application/zip", headers={"Content-Disposition": disposition})


@router.post("/studies", response_model=SubmissionOut, status_code=202, tags=["submissions"])
def submit(body: SubmissionIn, state: State) -> SubmissionOut:
    """Queue a study for `prunetune worker`: a config with the TOML file's schema, naming only models and
    data this server registers (zoo:, torchvision:, built-in data, its --factory specs; `"task": "decoder"`:
    a language-model study); the server's own store and artifacts folder are used."""
    try:
        raw = body.config if isinstance(body.config, dict) else body.config.model_dump(mode="json")  # a plug-in's
        cfg = check_submission(raw, state.allowed)
        record = state.queue.submit(str(cfg.search.study), cfg.model_dump(mode="json"))
    except SubmissionError as exc:
        raise HTTPException(422, first_line(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, first_line(exc)) from None
    return submission_out(record)


@router.get("/submissions", response_model=list[SubmissionOut], tags=["submissions"])
def list_submissions(state: State) -> list[SubmissionOut]:
    return [submission_out(s) for s in state.queue.all()]


@router.get("/submissions/{sid}", response_model=SubmissionOut, tags=["submissions"])
def get_submission(sid: int, state: State) -> SubmissionOut:
    try:
        return submission_out(state.queue.get(sid))
    except ValueError as exc:
        raise HTTPException(404, first_line(exc)) from None
