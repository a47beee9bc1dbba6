"""What can change in a model and what it costs.

``ModelSpace`` traces a model once and exposes its prunable channel groups,
``Plan`` says what to change, ``cost``/``measure_cost`` say what it costs and
``Budget``/``fit`` keep plans within limits.

Imports are lazy (PEP 562): ``import spaces`` and the torch-free parts (the
exception root, the vocabulary, ``Plan``, ``Budget``) do not import torch;
``ModelSpace`` and the surgery do, when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from spaces._lazy import lazy_exports

if TYPE_CHECKING:
    from spaces._errors import (
        InfeasibleBudgetError as InfeasibleBudgetError,
        InputTypeError as InputTypeError,
        PlanError as PlanError,
        PruneTuneError as PruneTuneError,
        UnsupportedModelError as UnsupportedModelError,
        UsageError as UsageError,
        first_line as first_line,
    )
    from spaces._lazy import lazy_exports as lazy_exports
    from spaces._lowrank import (
        LayerGeom as LayerGeom,
        factorize_layer as factorize_layer,
    )
    from spaces._plan import (
        IMPORTANCES as IMPORTANCES,
        METHODS as METHODS,
        Plan as Plan,
    )
    from spaces._quant import (
        dequantized as dequantized,
        fake_quant_weight as fake_quant_weight,
        quantize_layer as quantize_layer,
    )
    from spaces._registry import (
        Registry as Registry,
    )
    from spaces._space import (
        ModelSpace as ModelSpace,
    )
    from spaces._support import (
        PlanCheck as PlanCheck,
        Support as Support,
        check_cost as check_cost,
        support as support,
    )
    from spaces._vocab import (
        COST_METRICS as COST_METRICS,
        CandidateKind as CandidateKind,
        CostMetric as CostMetric,
        Direction as Direction,
        Importance as Importance,
        Method as Method,
        Objective as Objective,
        Status as Status,
    )
    from spaces.cost._cost import (
        COUNTED_OPS as COUNTED_OPS,
        Cost as Cost,
        measure_cost as measure_cost,
        parameter_bytes as parameter_bytes,
        quantized_bytes as quantized_bytes,
    )
    from spaces.cost._costmodel import (
        CostModel as CostModel,
    )
    from spaces.cost._latency import (
        DeviceProfile as DeviceProfile,
        measure_latency as measure_latency,
        profile_space as profile_space,
        recalibrate as recalibrate,
    )
    from spaces.graph._trace import (
        Group as Group,
    )
    from spaces.policy._allocate import (
        Allocation as Allocation,
        AllocatorFallbackWarning as AllocatorFallbackWarning,
        allocate as allocate,
    )
    from spaces.policy._budget import (
        Budget as Budget,
    )
    from spaces.policy._policy import (
        fit as fit,
        global_plan as global_plan,
        uniform_plan as uniform_plan,
    )
    from spaces.policy._sensitivity import (
        SENSITIVITY_RATIOS as SENSITIVITY_RATIOS,
        Sensitivity as Sensitivity,
        measure_sensitivity as measure_sensitivity,
    )
    from spaces.runtime._base import Runtime as Runtime
    from spaces.runtime._interrupt import (
        Interrupted as Interrupted,
        check_interrupt as check_interrupt,
        handle_signals as handle_signals,
        interrupt_requested as interrupt_requested,
        protected as protected,
        reinstall_handlers as reinstall_handlers,
        safe_points as safe_points,
    )
    from spaces.runtime._ort import (
        ort_session as ort_session,
        write_onnx as write_onnx,
    )
    from spaces.runtime._registry import (
        RUNTIMES as RUNTIMES,
        register_runtime as register_runtime,
        runtime_names as runtime_names,
    )
    from spaces.runtime._timing import (
        summarize as summarize,
        time_calls as time_calls,
    )

_WHERE = {
    "Allocation": "policy._allocate",
    "AllocatorFallbackWarning": "policy._allocate",
    "allocate": "policy._allocate",
    "Budget": "policy._budget",
    "COUNTED_OPS": "cost._cost",
    "Cost": "cost._cost",
    "measure_cost": "cost._cost",
    "parameter_bytes": "cost._cost",
    "quantized_bytes": "cost._cost",
    "CostModel": "cost._costmodel",
    "InfeasibleBudgetError": "_errors",
    "InputTypeError": "_errors",
    "PlanError": "_errors",
    "PruneTuneError": "_errors",
    "UnsupportedModelError": "_errors",
    "UsageError": "_errors",
    "first_line": "_errors",
    "Interrupted": "runtime._interrupt",
    "check_interrupt": "runtime._interrupt",
    "handle_signals": "runtime._interrupt",
    "interrupt_requested": "runtime._interrupt",
    "protected": "runtime._interrupt",
    "reinstall_handlers": "runtime._interrupt",
    "safe_points": "runtime._interrupt",
    "lazy_exports": "_lazy",
    "LayerGeom": "_lowrank",
    "factorize_layer": "_lowrank",
    "IMPORTANCES": "_plan",
    "METHODS": "_plan",
    "Plan": "_plan",
    "DeviceProfile": "cost._latency",
    "profile_space": "cost._latency",
    "measure_latency": "cost._latency",
    "recalibrate": "cost._latency",
    "RUNTIMES": "runtime._registry",
    "Runtime": "runtime._base",
    "register_runtime": "runtime._registry",
    "runtime_names": "runtime._registry",
    "Registry": "_registry",
    "ort_session": "runtime._ort",
    "write_onnx": "runtime._ort",
    "fit": "policy._policy",
    "global_plan": "policy._policy",
    "dequantized": "_quant",
    "fake_quant_weight": "_quant",
    "quantize_layer": "_quant",
    "PlanCheck": "_support",
    "Support": "_support",
    "check_cost": "_support",
    "support": "_support",
    "summarize": "runtime._timing",
    "time_calls": "runtime._timing",
    "Sensitivity": "policy._sensitivity",
    "SENSITIVITY_RATIOS": "policy._sensitivity",
    "measure_sensitivity": "policy._sensitivity",
    "uniform_plan": "policy._policy",
    "ModelSpace": "_space",
    "Group": "graph._trace",
    "COST_METRICS": "_vocab",
    "CandidateKind": "_vocab",
    "CostMetric": "_vocab",
    "Direction": "_vocab",
    "Importance": "_vocab",
    "Method": "_vocab",
    "Objective": "_vocab",
    "Status": "_vocab",
}

__all__ = [
    "COST_METRICS",
    "COUNTED_OPS",
    "IMPORTANCES",
    "METHODS",
    "RUNTIMES",
    "SENSITIVITY_RATIOS",
    "Allocation",
    "AllocatorFallbackWarning",
    "Budget",
    "CandidateKind",
    "Cost",
    "CostMetric",
    "CostModel",
    "DeviceProfile",
    "Direction",
    "Group",
    "Importance",
    "InfeasibleBudgetError",
    "InputTypeError",
    "Interrupted",
    "LayerGeom",
    "Method",
    "ModelSpace",
    "Objective",
    "Plan",
    "PlanCheck",
    "PlanError",
    "PruneTuneError",
    "Registry",
    "Runtime",
    "Sensitivity",
    "Status",
    "Support",
    "UnsupportedModelError",
    "UsageError",
    "allocate",
    "check_cost",
    "check_interrupt",
    "dequantized",
    "factorize_layer",
    "fake_quant_weight",
    "first_line",
    "fit",
    "global_plan",
    "handle_signals",
    "interrupt_requested",
    "lazy_exports",
    "measure_cost",
    "measure_latency",
    "measure_sensitivity",
    "ort_session",
    "parameter_bytes",
    "profile_space",
    "protected",
    "quantize_layer",
    "quantized_bytes",
    "recalibrate",
    "register_runtime",
    "reinstall_handlers",
    "runtime_names",
    "safe_points",
    "summarize",
    "support",
    "time_calls",
    "uniform_plan",
    "write_onnx",
]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
