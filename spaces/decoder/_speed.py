"""A decoder's speed on this machine: measured tokens per second, and a latency model learned from measurements.

Vision models get per-layer latency tables (:mod:`spaces.cost._latency`);
a decoder's time is better told by what a plan keeps, because every layer of
a family runs the same kernels. For one model structure, device and thread
count, :func:`profile_decoder` **measures** the whole model, built, at a
couple of dozen plans (dense, uniform, MLP-only and attention-only, depth-only
and seeded random plans), each for a **prefill** of ``context`` tokens and a
**decode** of ``new_tokens`` tokens with the KV cache after it, and fits, by
non-negative least squares (``scipy.optimize.nnls``, on relative errors), one linear model per pass:

``ms = a + sum over kept layers of t[g] + c * projection GMACs``

where ``t[g]`` is the time of a layer that keeps ``g`` key-value groups (its
attention products, softmax, norms, residual and kernel launches: a table
over ``g``, because that time is far from linear in the heads on a CPU: at a
context of 1,024 a layer of the stdlib teacher with both of its groups takes
about twenty times the time of one with one group, not twice), and the
projection MACs are every ``nn.Linear`` of the kept layers and the output
head, factor chains included, as :class:`~spaces.decoder.DecoderCost` counts
them exactly. Non-negative coefficients keep the model monotone in the MLP
widths: a plan that keeps fewer channels is never predicted slower. A quarter
of the random plans is held out of the fit, and their error is what
:attr:`DecoderLatency.error` reports (``prunetune profile`` prints the whole
table), so a model that does not hold on this machine says so.

The decode pass is timed as greedy generation runs it, one token at a time
with the KV cache, but without ``generate``'s bookkeeping: a mean over
``new_tokens`` steps after an untimed prefill (:func:`pass_times`).

Per-layer bits are simulated in torch (the weights are rounded, the products
stay float32), so a quantized plan is predicted at its float speed; ONNX
Runtime's ``MatMulNBits`` speed is measured on the exported file, not modelled.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from spaces._errors import UnsupportedModelError
from spaces._plan import Plan
from spaces.decoder._choice import DecoderChoice, resolve
from spaces.decoder._footprint import DecoderCost
from spaces.decoder._layout import layout_of
from spaces.runtime._timing import summarize, time_calls

if TYPE_CHECKING:
    from spaces.decoder._plans import DecoderSpace

__all__ = [
    "DECODER_PROFILE_FORMAT",
    "NEW_TOKENS",
    "DecoderLatency",
    "LatencySample",
    "pass_times",
    "profile_decoder",
    "tokens_per_second",
]

DECODER_PROFILE_FORMAT = 1  # a stored model of another format is measured again, not misread
NEW_TOKENS = 32  # tokens decoded per timed generation


def pass_times(model: nn.Module, context: int, new_tokens: int = NEW_TOKENS, *, runs: int = 5) -> tuple[float, float]:
    """Measured on this machine, batch 1, in torch: the median ms of a prefill of ``context`` tokens, and the
    median over ``runs`` of the mean ms of one decoded token, over ``new_tokens`` greedy steps with the KV cache
    after a prefill of ``context - 1`` tokens (each step feeds the last step's argmax, as greedy generation
    does; the prefill before each run is not timed). An encoder does not decode: its decode time is NaN."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 256))
    device = next(model.parameters()).device
    ids = torch.randint(0, vocab, (1, context), generator=torch.Generator().manual_seed(0)).to(device)
    model.eval()
    with torch.no_grad():
        prefill = summarize(time_calls(lambda: model(input_ids=ids, use_cache=False), runs=2 * runs - 1, warmup=3))
        if not layout_of(model).causal:
            return prefill["median_ms"], math.nan
        decode = [_decode_ms(model, ids, new_tokens) for _ in range(runs + 1)][1:]  # the first warms up
    return prefill["median_ms"], statistics.median(decode)


def _decode_ms(model: nn.Module, ids: torch.Tensor, new_tokens: int) -> float:
    """The mean ms of one greedy decode step over ``new_tokens`` steps after a prefill of ``ids`` less its last."""
    cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
    token = ids[:, -1:]
    t = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=cache, use_cache=True)
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return (time.perf_counter() - t) * 1e3 / new_tokens


def tokens_per_second(model: nn.Module, context: int, new_tokens: int = NEW_TOKENS) -> tuple[float, float]:
    """Measured prefill and decode tokens per second (:func:`pass_times`; an encoder's decode: NaN)."""
    prefill_ms, decode_ms = pass_times(model, context, new_tokens)
    return context / prefill_ms * 1e3, 1e3 / decode_ms


def features(choice: DecoderChoice, cost: DecoderCost, groups: int) -> tuple[list[float], list[float]]:
    """The prefill and the decode pass's features (see the module docs): 1, the kept layers that keep ``g``
    key-value groups for ``g = 1 .. groups``, the projection and output-head GMACs of the pass."""
    by_groups = [0.0] * groups
    for i in choice.layers:
        by_groups[len(choice.groups[i]) - 1] += 1.0
    prefill = [1.0, *by_groups, (cost.prefill_macs - cost.prefill_attention_macs) / 1e9]
    decode = [1.0, *by_groups, (cost.decode_macs - cost.decode_attention_macs) / 1e9]
    return prefill, decode


@dataclass(frozen=True)
class LatencySample:
    """One measured plan: its name, whether the fit read it, and its measured and predicted prefill and decode ms."""

    label: str
    fitted: bool
    prefill_ms: float
    predicted_prefill_ms: float
    decode_ms: float
    predicted_decode_ms: float


@dataclass(frozen=True)
class DecoderLatency:
    """One decoder structure's latency model on one machine (see the module docs)."""

    key: str
    device: str
    threads: int
    context: int
    new_tokens: int
    groups: int  # the most key-value groups a layer has: the table t[g] has this many entries
    prefill: tuple[float, ...]  # ms = prefill . features(...)[0]
    decode: tuple[float, ...]  # ms per decoded token = decode . features(...)[1]
    samples: tuple[LatencySample, ...] = field(default_factory=tuple)

    def predict_ms(self, choice: DecoderChoice, cost: DecoderCost) -> tuple[float, float]:
        """Predicted ms of a prefill of ``context`` tokens and of one decoded token, for a plan resolved as
        ``choice`` (:func:`spaces.decoder.resolve`) that costs ``cost`` (at this model's context)."""
        if cost.context != self.context:
            raise ValueError(f"the latency model is fitted at context {self.context}, the cost is at {cost.context}")
        pre, dec = features(choice, cost, self.groups)
        return _dot(self.prefill, pre), _dot(self.decode, dec)

    def tokens_per_second(self, choice: DecoderChoice, cost: DecoderCost) -> tuple[float, float]:
        """Predicted prefill and decode tokens per second of a plan (as :meth:`predict_ms`)."""
        prefill_ms, decode_ms = self.predict_ms(choice, cost)
        return self.context / prefill_ms * 1e3, 1e3 / decode_ms

    @property
    def error(self) -> tuple[float, float]:
        """The largest relative error of the prefill and the decode prediction on the held-out plans."""
        held = [s for s in self.samples if not s.fitted] or list(self.samples)
        pre = max((abs(s.predicted_prefill_ms - s.prefill_ms) / s.prefill_ms for s in held), default=0.0)
        dec = max((abs(s.predicted_decode_ms - s.decode_ms) / s.decode_ms for s in held), default=0.0)
        return pre, dec

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DecoderLatency:
        data = json.loads(text)
        samples = tuple(LatencySample(**s) for s in data.pop("samples"))
        return cls(**{**data, "prefill": tuple(data["prefill"]), "decode": tuple(data["decode"])}, samples=samples)

    @staticmethod
    def key_for(model: nn.Module, device: torch.device | str, *, threads: int, context: int, new_tokens: int) -> str:
        """The store key of ``model``'s structure on ``device`` with ``threads`` threads at ``context``: its
        config's architecture (names, versions and what saving adds left out: a model saved and loaded again has
        the same key), the parameters' dtype and the format."""
        config = model.config.to_dict()  # type: ignore[union-attr,operator]
        for k in ("_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype", "torch_dtype"):
            config.pop(k, None)
        dtype = str(next(model.parameters()).dtype)
        what = json.dumps([config, dtype, str(device), threads, context, new_tokens, DECODER_PROFILE_FORMAT],
                          sort_keys=True, default=str)  # fmt: skip
        return "decoder-" + hashlib.sha256(what.encode()).hexdigest()[:24]


def _dot(coef: Sequence[float], x: Sequence[float]) -> float:
    return float(sum(c * v for c, v in zip(coef, x, strict=True)))


def sample_plans(space: DecoderSpace, *, random_plans: int = 16, seed: int = 0) -> list[tuple[str, Plan, bool]]:
    """The plans a latency model is learned from: ``(label, plan, fitted)``; the last quarter of the random
    plans is held out of the fit. Every plan keeps at least one layer and one structure of every group."""
    names = list(space.groups)
    layers = sorted({g.rsplit(".", 1)[0] for g in names}, key=lambda n: int(n.rsplit(".", 1)[1]))
    r = space.max_ratio
    plans: list[tuple[str, Plan, bool]] = [("dense", Plan(), True)]
    plans += [(f"uniform {q:.2f}", space.uniform_plan(q * r), True) for q in (0.3, 0.6, 1.0)]
    for kind in ("mlp", "attn"):
        plans.append((f"{kind} only {r:.2f}", Plan(prune={g: r for g in names if g.endswith("." + kind)}), True))
    for n in sorted({1, len(layers) // 2} - {0, len(layers)}):  # a one-layer model keeps its layer
        plans.append((f"{n} layer(s) dropped", Plan(depth=dict.fromkeys(layers[-n:], "shortcut")), True))
    rng = random.Random(seed)
    fitted = random_plans - max(1, random_plans // 4)
    for k in range(random_plans):
        dropped = rng.sample(layers, rng.randrange(len(layers)))  # never all of them
        prune = {g: round(rng.uniform(0.0, r), 4) for g in names if g.rsplit(".", 1)[0] not in dropped}
        plans.append((f"random {k}", Plan(prune=prune, depth=dict.fromkeys(dropped, "shortcut")), k < fitted))
    return plans


def profile_decoder(
    space: DecoderSpace, *, device: torch.device | str, threads: int, new_tokens: int = NEW_TOKENS, runs: int = 5
) -> DecoderLatency:
    """Measure ``space``'s model at the plans of :func:`sample_plans` on ``device`` and fit its latency model at
    the space's context (see the module docs)."""
    from scipy.optimize import nnls

    if not space.layout.causal:
        raise UnsupportedModelError(f"{space.layout.name} is an encoder: it does not decode, and has no latency model")
    groups = max(n for g, n in space.groups.items() if g.endswith(".attn"))
    rows = []
    for label, plan, fitted in sample_plans(space):
        model = space.apply(plan).to(device)
        pre_ms, dec_ms = pass_times(model, space.context, new_tokens, runs=runs)
        choice = resolve(space.model, plan, counts_only=True)
        rows.append((label, fitted, choice, space.cost(plan), pre_ms, dec_ms))
    coefs = []
    for k in (0, 1):  # prefill, then decode
        a = torch.tensor([features(ch, c, groups)[k] for _, f, ch, c, _, _ in rows if f], dtype=torch.float64)
        b = torch.tensor([(p, d)[k] for _, f, _, _, p, d in rows if f], dtype=torch.float64)
        a, b = a / b[:, None], torch.ones_like(b)  # relative errors: a fast plan counts as much as a slow one
        scale = a.abs().amax(0).clamp_min(1e-12)  # nnls on columns of one size, then back
        x, _ = nnls((a / scale).numpy(), b.numpy())
        coefs.append(tuple(float(v) for v in torch.from_numpy(x) / scale))
    key = DecoderLatency.key_for(space.model, device, threads=threads, context=space.context, new_tokens=new_tokens)
    fit = DecoderLatency(key, str(device), threads, space.context, new_tokens, groups, coefs[0], coefs[1])
    samples = []
    for label, fitted, choice, cost, pre_ms, dec_ms in rows:
        pred_pre, pred_dec = fit.predict_ms(choice, cost)
        samples.append(LatencySample(label, fitted, pre_ms, pred_pre, dec_ms, pred_dec))
    return replace(fit, samples=tuple(samples))
