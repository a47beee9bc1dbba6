"""``prunetune profile``: the study's device profile, measured once on this machine and kept in the store.

A device profile (:mod:`spaces.cost._latency`) holds, for one model structure,
device, runtime, thread count and batch size, the latency of every conv and
linear layer over the channel counts plans can give it (timed alone, then
corrected by the layer's time inside the whole model), the time of everything
else, and the channel multiple beyond which the device gains no speed. It is
stored in the study store (``prunetune_profiles``) under its key, so every
worker and every later study of the same model on the same kind of machine
reads it instead of measuring again. A study needs one when its budget limits
``latency``, its objectives rank by latency without ``evaluate.latency``
(measured per candidate), or its ``space.round_to`` is ``"auto"``; :func:`device_profile`
is what its preparation calls, and ``prunetune profile CONFIG`` measures (or
shows) it ahead of time. A profile cached by an older version of the latency
model has another key (``spaces.cost._latency.PROFILE_FORMAT``), so it is measured
again rather than misread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from search._config import Config
    from spaces import DeviceProfile, ModelSpace
    from storage import StudyStore

__all__ = [
    "PROFILE_RUNS",
    "device_profile",
    "latency_device",
    "needs_profile",
    "predicts_latency",
    "profiled_methods",
    "structure_space",
]

PROFILE_RUNS = 7  # timed calls per point of a layer's table (the median is kept)


def predicts_latency(cfg: Config) -> bool:
    """Whether a study of ``cfg`` limits or ranks by *predicted* latency: a latency budget, or the latency
    objective unless every candidate is measured (``evaluate.latency = true``, and always with bits, which
    the profile does not predict)."""
    from spaces import Objective

    predictable = cfg.space.quantize == "none"
    objective = Objective.LATENCY in cfg.search.objectives and not cfg.evaluate.latency and predictable
    return cfg.budget.latency is not None or objective


def profiled_methods(cfg: Config) -> list[str]:
    """The factorization methods whose chains the study's profile times: the ones ``space.rank`` searches."""
    if not cfg.space.rank:
        return []
    return sorted({m.value for m in cfg.space.methods} | {cfg.space.method.value})


def needs_profile(cfg: Config) -> bool:
    """Whether a study of ``cfg`` uses a device profile: a latency budget, ``space.round_to = "auto"``, or the
    latency objective unless every candidate is measured (``evaluate.latency = true``)."""
    return predicts_latency(cfg) or cfg.space.round_to == "auto"


def device_profile(
    space: ModelSpace,
    store: StudyStore,
    *,
    device: torch.device,
    threads: int,
    batch: int = 1,
    runs: int = PROFILE_RUNS,
    force: bool = False,
    runtime: str = "torch",
    methods: list[str] | None = None,
) -> tuple[DeviceProfile, bool]:
    """The profile of ``space`` on ``device`` in ``runtime`` from ``store`` (with the factor chains of
    ``methods``), measured and stored first if it has none (or ``force``); and whether it was measured now."""
    from spaces import DeviceProfile, profile_space

    device = latency_device(runtime, device)
    methods = methods or []
    key = DeviceProfile.key_for(space, device, threads=threads, batch=batch, runtime=runtime, methods=methods)
    stored = None if force else store.profile(key)
    if stored is not None:
        return DeviceProfile.from_json(stored), False
    prof = profile_space(
        space, device=device, threads=threads, batch=batch, runs=runs, runtime=runtime, methods=methods
    )
    if force:
        store.delete_profile(key)
    text = store.save_profile(
        prof.key, prof.to_json(), device=prof.device, runtime=prof.runtime, threads=threads, batch=batch
    )
    return DeviceProfile.from_json(text), True


def latency_device(runtime: str, device: torch.device) -> torch.device:
    """Where latency is measured: the evaluation device, or the CPU for ONNX Runtime (its CPU provider)."""
    import torch

    return torch.device("cpu") if runtime == "onnxruntime" else device


def structure_space(cfg: Config) -> ModelSpace:
    """The study's space built on the model's structure alone (fresh weights: latency does not read them)."""
    from evaluators import build_model, load_data
    from spaces import ModelSpace

    data = load_data(cfg.data.spec, data_dir=cfg.data.data_dir, seed=cfg.data.seed)
    model = build_model(cfg.model.spec, in_channels=data.in_channels, num_classes=data.num_classes)
    return ModelSpace(model.eval(), data.example_inputs(1), **cfg.space.space_kwargs())
