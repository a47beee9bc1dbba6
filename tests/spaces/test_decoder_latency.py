"""The decoder's latency model (``spaces/decoder/_speed.py``): its features are exact counts, its fit reads only
what it was given, and its predictions are the stored coefficients applied to a plan (never a timed assert)."""

from __future__ import annotations

import pytest
import torch

from spaces import Plan
from spaces.decoder import DecoderLatency, DecoderSpace, pass_times, profile_decoder, resolve
from spaces.decoder._speed import features, sample_plans

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def space() -> DecoderSpace:
    from evaluators._hf import tiny_model

    model = tiny_model("llama", num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                       num_key_value_heads=2)  # fmt: skip
    return DecoderSpace(model, context=24)


def test_the_features_count_layers_by_their_kept_groups_and_the_projection_macs_exactly(space: DecoderSpace) -> None:
    plan = Plan(prune={"model.layers.0.attn": 0.5, "model.layers.1.mlp": 0.5}, depth={"model.layers.2": "shortcut"})
    choice, cost = resolve(space.model, plan, counts_only=True), space.cost(plan)
    pre, dec = features(choice, cost, groups=2)
    # layer 0 keeps 1 of 2 key-value groups, layer 1 both; layer 2 is dropped
    assert pre[:3] == dec[:3] == [1.0, 1.0, 1.0]
    hidden, vocab, head = 32, int(space.model.config.vocab_size), 8  # head width 32 / 4 query heads
    # per token: layer 0 (q 2 heads, k and v 1 group, o 2 heads; MLP 64) + layer 1 (everything; MLP 32)
    layer0 = hidden * 2 * head + 2 * hidden * head + 2 * head * hidden + 3 * hidden * 64
    layer1 = hidden * 4 * head + 2 * hidden * 2 * head + 4 * head * hidden + 3 * hidden * 32
    assert pre[3] == pytest.approx((24 * (layer0 + layer1) + hidden * vocab) / 1e9, rel=1e-12)
    assert dec[3] == pytest.approx((layer0 + layer1 + hidden * vocab) / 1e9, rel=1e-12)


def test_the_sample_plans_hold_out_a_quarter_of_the_random_ones_and_keep_a_layer(space: DecoderSpace) -> None:
    plans = sample_plans(space, random_plans=8, seed=3)
    assert [label for label, _, f in plans if not f] == ["random 6", "random 7"]
    for _, plan, _ in plans:
        assert len(resolve(space.model, plan, counts_only=True).layers) >= 1
    assert [p.to_json() for _, p, _ in plans] == [
        p.to_json() for _, p, _ in sample_plans(space, random_plans=8, seed=3)
    ]


def test_a_profile_predicts_with_its_coefficients_round_trips_and_is_monotone_in_the_widths(
    space: DecoderSpace,
) -> None:
    prof = profile_decoder(space, device="cpu", threads=torch.get_num_threads(), new_tokens=4, runs=1)
    assert prof.groups == 2 and len(prof.prefill) == len(prof.decode) == 4
    assert all(c >= 0 for c in (*prof.prefill, *prof.decode))
    assert len(prof.samples) == 6 + 1 + 16 and sum(not s.fitted for s in prof.samples) == 4
    assert DecoderLatency.from_json(prof.to_json()) == prof
    for (_, plan, _), sample in zip(sample_plans(space), prof.samples, strict=True):
        choice, cost = resolve(space.model, plan, counts_only=True), space.cost(plan)
        pre_ms, dec_ms = prof.predict_ms(choice, cost)
        assert pre_ms == pytest.approx(sample.predicted_prefill_ms) and dec_ms == pytest.approx(
            sample.predicted_decode_ms
        )
        pre_f, dec_f = features(choice, cost, 2)
        assert pre_ms == pytest.approx(sum(c * x for c, x in zip(prof.prefill, pre_f, strict=True)))
        assert dec_ms == pytest.approx(sum(c * x for c, x in zip(prof.decode, dec_f, strict=True)))
    wide, narrow = Plan(), Plan(prune={"model.layers.0.mlp": 0.75})  # fewer MLP channels: never predicted slower
    tps = [prof.tokens_per_second(resolve(space.model, p, counts_only=True), space.cost(p)) for p in (wide, narrow)]
    assert tps[1][0] >= tps[0][0] and tps[1][1] >= tps[0][1]
    with pytest.raises(ValueError, match="fitted at context 24"):
        prof.predict_ms(resolve(space.model, wide, counts_only=True), DecoderSpace(space.model, context=8).cost(wide))


def test_pass_times_decodes_with_the_cache_the_tokens_it_is_asked_for(space: DecoderSpace) -> None:
    calls: list[int] = []  # the length of every forward pass's input
    hook = space.model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape[1]),
                                                 with_kwargs=True)  # fmt: skip
    try:
        prefill_ms, decode_ms = pass_times(space.model, 24, new_tokens=5, runs=1)
    finally:
        hook.remove()
    assert prefill_ms > 0 and decode_ms > 0
    # prefill: 3 warm-up calls and 1 timed of 24 tokens; decode: 2 runs (one warms up) of a prefill of 23, 5 steps
    assert calls == [24] * 4 + ([23] + [1] * 5) * 2
