"""Attention in a space: whole-head pruning, the head-prunable attention's forward, and the cost of products."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torchvision
from torch import nn

from spaces import ModelSpace, Plan, PlanError, UnsupportedModelError, check_cost, factorize_layer, measure_cost
from spaces.dimensions._bits import quantizable_layers
from spaces.graph._attention import HeadPrunableAttention, convert, functional_macs, product_macs
from tests.spaces.models import vit_tiny

E, H = 32, 4
_Vit = tuple[nn.Module, torch.Tensor, ModelSpace]  # embedding and heads of the attention the forward is compared on


@pytest.fixture(scope="module")
def vit() -> tuple[nn.Module, torch.Tensor, ModelSpace]:
    torch.manual_seed(0)
    model = vit_tiny().eval()
    x = torch.randn(2, 3, 32, 32)
    return model, x, ModelSpace(model, x)


def _masks(kind: str, n: int, length: int, source: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    boolean = torch.rand(length, source, generator=gen) < 0.3
    boolean[:, 0] = False  # every query attends to at least one key
    padding = torch.zeros(n, source, dtype=torch.bool)
    padding[0, -2:] = True
    return {
        "none": {},
        "bool": {"attn_mask": boolean},
        "float": {"attn_mask": torch.randn(length, source, generator=gen)},
        "per_head": {"attn_mask": torch.randn(n * H, length, source, generator=gen)},
        "padding": {"key_padding_mask": padding},
        "both": {"attn_mask": boolean, "key_padding_mask": padding},
    }[kind]


@pytest.mark.parametrize("kind", ["none", "bool", "float", "per_head", "padding", "both"])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_head_prunable_attention_computes_what_torch_computes(kind: str, batch_first: bool, need_weights: bool) -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first).eval()
    ours = convert(copy.deepcopy(ref), [""])
    assert type(ours) is HeadPrunableAttention and ours.state_dict().keys() == ref.state_dict().keys()
    n, length, source = 3, 5, 7
    q = torch.randn(n, length, E) if batch_first else torch.randn(length, n, E)
    kv = torch.randn(n, source, E) if batch_first else torch.randn(source, n, E)
    for key in (q, kv):  # self-attention (one projection), then other keys and values (three)
        src = key.shape[1] if batch_first else key.shape[0]
        masks = _masks(kind, n, length, src)
        for average in (True, False):
            args = (q, key, key)
            kwargs = {"need_weights": need_weights, "average_attn_weights": average, **masks}
            with torch.no_grad():
                want, want_w = ref(*args, **kwargs)
                got, got_w = ours(*args, **kwargs)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            if need_weights:
                torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)
            else:
                assert got_w is None and want_w is None


def test_unbatched_and_causal_inputs_match_torch() -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=True).eval()
    ours = convert(copy.deepcopy(ref), [""])
    x = torch.randn(6, E)
    causal = nn.Transformer.generate_square_subsequent_mask(6)
    with torch.no_grad():
        for kwargs in ({}, {"attn_mask": causal, "is_causal": True}):
            want, want_w = ref(x, x, x, **kwargs)
            got, got_w = ours(x, x, x, **kwargs)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)


def test_vit_attention_costs_exactly_what_the_formula_says(vit: _Vit) -> None:
    model, x, space = vit
    n, tokens, e, mlp, layers, classes = 2, 17, 64, 128, 2, 10  # 16 patches + the class token
    patches = n * 16 * e * 3 * 8 * 8
    attention = n * tokens * e * 3 * e + 2 * n * tokens * tokens * e + n * tokens * e * e
    block = attention + 2 * n * tokens * e * mlp
    want = patches + layers * block + n * e * classes
    assert measure_cost(model, x).macs == want  # torch's fused attention (aten::_native_multi_head_attention)
    assert space.base_cost.macs == measure_cost(space.model, x).macs == want  # ours: linear + SDPA + linear
    assert space.cost(Plan()).macs == want


def test_heads_are_groups_and_pruning_them_sets_num_heads(vit: _Vit) -> None:
    _model, x, space = vit
    heads = [g for g in space.groups if g.id.endswith("self_attention")]
    assert [g.channels for g in heads] == [4, 4]
    assert "in_proj" in next(iter(space.not_factorizable))  # said why the fused q/k/v projection is not a layer
    for ratio, left in ((0.25, 3), (0.5, 2), (0.75, 1)):
        plan = Plan({g.id: ratio for g in heads})
        pruned = space.apply(plan)
        attn = pruned.get_submodule(heads[0].id)
        assert (attn.num_heads, attn.head_dim, tuple(attn.in_proj_weight.shape)) == (left, 16, (3 * 16 * left, 64))
        assert tuple(attn.out_proj.weight.shape) == (64, 16 * left)
        with torch.no_grad():
            assert pruned(x).shape == (2, 10)
        assert space.cost(plan) == measure_cost(pruned, x)


def test_heads_and_mlps_are_two_stages(vit: _Vit) -> None:
    _model, _x, space = vit
    layers = [f"encoder.layers.encoder_layer_{i}" for i in range(2)]
    assert space.stages() == {
        "stage1": [f"{layers[0]}.self_attention", f"{layers[1]}.self_attention"],
        "stage2": [f"{layers[0]}.mlp.0", f"{layers[1]}.mlp.0"],
    }


def test_a_dead_head_goes_first_and_the_outputs_stay(vit: _Vit) -> None:
    model, x, _ = vit
    model = copy.deepcopy(model)
    attn = model.encoder.layers[0].self_attention
    d, dead = 16, 2
    with torch.no_grad():
        for block in range(3):  # its q, k and v rows
            rows = slice(block * 64 + dead * d, block * 64 + (dead + 1) * d)
            attn.in_proj_weight[rows] = 0.0
            attn.in_proj_bias[rows] = 0.0
    space = ModelSpace(model, x)
    gid = "encoder.layers.encoder_layer_0.self_attention"
    pruned = space.apply(Plan({gid: 0.25}))
    kept = pruned.get_submodule(gid).in_proj_weight
    alive = [h for h in range(4) if h != dead]
    want = torch.cat([attn.in_proj_weight[b * 64 + h * d : b * 64 + (h + 1) * d] for b in range(3) for h in alive])
    torch.testing.assert_close(kept, want, atol=0, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-5, rtol=1e-5)


def test_a_factorized_out_projection_at_full_rank_is_the_original(vit: _Vit) -> None:
    model, x, space = vit
    name = "encoder.layers.encoder_layer_1.self_attention.out_proj"
    assert space.layer(name).kind == "linear"
    copy_ = copy.deepcopy(space.model)
    attn = copy_.get_submodule(name.rpartition(".")[0])
    attn.out_proj = factorize_layer(attn.out_proj, "svd", (64,))
    with torch.no_grad():
        torch.testing.assert_close(copy_(x), model(x), atol=1e-5, rtol=1e-5)
    plan = Plan(rank={name: 0.25}, prune={"encoder.layers.encoder_layer_1.self_attention": 0.5})
    assert check_cost(space, plan) is None


def test_vit_b_16_random_plans_cost_equals_measured() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    space = ModelSpace(model, x)
    assert sum(g.id.endswith("self_attention") for g in space.groups) == 12
    rng = random.Random(16)
    plan = Plan(
        prune={g.id: rng.choice((0.25, 0.5, 0.75)) for g in space.groups if rng.random() < 0.7},
        rank={layer.name: rng.uniform(0.1, 0.5) for layer in rng.sample(space.layers, 4)},
    )
    assert check_cost(space, plan) is None


def test_timm_vit_heads_are_pruned_with_its_own_attention_class() -> None:
    import timm  # the timm extra (installed by scripts/install.sh, as in CI)

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2).eval()
    x = torch.randn(2, 3, 32, 32)
    space = ModelSpace(model, x)
    assert {g.id: g.channels for g in space.groups if g.id.endswith("attn")} == {"blocks.0.attn": 3, "blocks.1.attn": 3}
    assert not space.excluded  # torch-pruning's failing q/k/v groups are replaced by the head groups
    plan = Plan({"blocks.0.attn": 0.34, "blocks.1.attn": 0.67, "blocks.1.mlp.fc1": 0.5, "patch_embed.proj": 0.25})
    pruned = space.apply(plan)
    attn = pruned.blocks[1].attn
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features, attn.proj.in_features) == (1, 64, 192, 64)
    assert space.cost(plan) == measure_cost(pruned, x)
    tokens, e, n = 17, 192, 2
    attention = n * tokens * e * 3 * e + 2 * n * tokens * tokens * e + n * tokens * e * e  # 3 heads of 64
    assert space.cost(Plan()).macs - space.cost(Plan({"blocks.0.attn": 0.34})).macs == attention // 3


@pytest.mark.parametrize(("name", "size"), [("swin_t", 64), ("maxvit_t", 224)])
def test_torchvision_swin_and_maxvit_plans_cost_exactly_what_they_build(name: str, size: int) -> None:
    """Swin applies its layers' weights with F.linear, MaxViT's attention is einsum: both costed, both exact."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, size, size)
    space = ModelSpace(model, x)  # refused if its analytic cost were not the measured one
    rng = random.Random(name)
    plan = Plan(
        prune={g.id: rng.choice((0.25, 0.5)) for g in space.groups if rng.random() < 0.7},
        rank={layer.name: 0.3 for layer in rng.sample(space.layers, 3)},
    )
    assert plan.prune and check_cost(space, plan) is None
    if name == "swin_t":
        assert "F.linear" in space.not_factorizable["features.1.0.attn.qkv"]


class _Functional(nn.Module):
    """A layer whose weight is also applied with F.linear, and an einsum between activations."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(12, 8), nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 5, 12)
        h = self.a(x) + torch.nn.functional.linear(x.flip(1), self.a.weight)  # a's weight applied twice
        mixed = torch.einsum("n i c, n j c -> n i j", h, h).softmax(-1) @ h  # (N, 5, 5) then (N, 5, 8)
        return self.b(mixed.mean(1))


def test_weights_applied_outside_their_layer_and_einsums_are_costed() -> None:
    torch.manual_seed(0)
    model, x = _Functional().eval(), torch.randn(3, 5, 12)
    space = ModelSpace(model, x)
    n, tokens = 3, 5
    layers = 2 * n * tokens * 12 * 8 + n * 8 * 10
    products = n * tokens * tokens * 8 * 2  # the einsum, then the weighted sum
    assert space.base_cost.macs == measure_cost(model, x).macs == layers + products
    assert "F.linear" in space.not_factorizable["a"]  # costed, never replaced


def test_head_scores_from_the_library_estimators_and_data_criteria(vit: _Vit) -> None:
    model, x, _ = vit
    model = copy.deepcopy(model)
    attn = model.encoder.layers[0].self_attention
    with torch.no_grad():  # head 1 of layer 0 much weaker than the others, in q/k/v and in the output projection
        for block in range(3):
            attn.in_proj_weight[block * 64 + 16 : block * 64 + 32] *= 0.01
        attn.out_proj.weight[:, 16:32] *= 0.01
    gid = "encoder.layers.encoder_layer_0.self_attention"
    for importance in ("l1", "group_l2", "lamp"):
        space = ModelSpace(model, x, importance=importance)
        assert space.scores.of(space.costs.group_index(gid), importance).shape == (4,)
        assert int(space.scores.order(importance)[space.costs.group_index(gid)][-1]) == 1, importance
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 3, 32, 32, generator=gen), torch.randint(0, 10, (4,), generator=gen))]
    scores = ModelSpace(model, x).calibrate_importance("taylor", batches)
    assert scores[gid].shape == (4,) and (scores[gid] >= 0).all()


def test_attention_inside_torchs_fused_encoder_layer_keeps_its_heads() -> None:
    """TransformerEncoderLayer's fast path reads its attention's weights directly: its heads are not a group."""

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(8, 24)
            layer = nn.TransformerEncoderLayer(24, 6, 48, dropout=0.0, batch_first=True)
            self.enc, self.fc = nn.TransformerEncoder(layer, 2), nn.Linear(24, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.enc(self.embed(x)).mean(1))

    torch.manual_seed(0)
    model, x = Encoder().eval(), torch.randn(2, 5, 8)
    space = ModelSpace(model, x, ignored_layers=["embed"])
    assert [g.id for g in space.groups] == ["enc.layers.0.linear1", "enc.layers.1.linear1"]
    assert type(space.model.enc.layers[0].self_attn) is nn.MultiheadAttention
    plan = Plan({"enc.layers.0.linear1": 0.5})
    with torch.no_grad():  # eval + no grad: the fused fast path
        assert space.apply(plan)(x).shape == (2, 3)
    assert check_cost(space, plan) is None


def test_a_head_pruned_model_is_refused_with_the_reason(vit: _Vit) -> None:
    _model, x, space = vit
    pruned = space.apply(Plan({"encoder.layers.encoder_layer_0.self_attention": 0.5}))
    with pytest.raises(UnsupportedModelError, match="heads were pruned already"):
        ModelSpace(pruned, x)


def test_masks_follow_the_inputs_device() -> None:
    ours = convert(nn.MultiheadAttention(E, H, batch_first=True), [""]).to("meta")
    q = torch.randn(2, 5, E, device="meta")
    mask = torch.zeros(5, 5, dtype=torch.bool, device="meta")
    padding = torch.zeros(2, 5, dtype=torch.bool, device="meta")
    for need_weights in (True, False):
        out, _ = ours(q, q, q, attn_mask=mask, key_padding_mask=padding, need_weights=need_weights)
        assert out.device.type == "meta" and out.shape == (2, 5, E)


def test_unbatched_attention_and_broadcast_einsum_are_counted_exactly() -> None:
    class Unbatched(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(E, H)  # sequence-first, fed one sequence (L, E)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.attn(x, x, x, need_weights=False)[0]

    x, length = torch.randn(6, E), 6
    want = length * E * 3 * E + 2 * length * length * E + length * E * E
    assert functional_macs(Unbatched().eval(), (x,)) == want == measure_cost(Unbatched().eval(), x).macs
    assert product_macs("einsum", [(8, 4, 5), (1, 5, 6)], (8, 4, 6), {"equation": "...ij,...jk->...ik"}) == 960


def test_weights_applied_outside_their_layer_are_not_quantized() -> None:
    torch.manual_seed(0)
    space = ModelSpace(_Functional().eval(), torch.randn(3, 5, 12))
    assert "a" not in quantizable_layers(space.costs) and "b" in quantizable_layers(space.costs)
    with pytest.raises(PlanError, match="applied outside its forward"):
        space.cost(Plan(bits={"a": 4}))


class _Energy(nn.Module):
    """A conv's features meet in a product between activations (detached: torch-pruning's trace cannot see it)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.a(x)
        g = f.flatten(2)  # (N, 8, 64)
        energy = (g.transpose(1, 2) @ g).mean((1, 2)).detach()  # its inner size is a's width
        return self.fc(self.b(f).mean((2, 3))) + energy[:, None]


def test_products_between_activations_are_counted_and_guarded() -> None:
    torch.manual_seed(0)
    model, x = _Energy().eval(), torch.randn(2, 3, 8, 8)
    space = ModelSpace(model, x)
    product = 2 * 64 * 8 * 64  # (N, 64, 8) @ (N, 8, 64)
    layers = 2 * 64 * 8 * 27 + 2 * 64 * 4 * 72 + 2 * 4 * 10
    assert space.base_cost.macs == measure_cost(model, x).macs == layers + product
    assert "product between activations" in space.excluded["a"]  # pruning it would change the product's cost
    plan = Plan({"b": 0.5})
    assert check_cost(space, plan) is None


class _Decoder(nn.Module):
    """Learned queries attending to image features: a cross-attention, which keeps torch's class."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 32, 4, stride=4)
        self.queries = nn.Parameter(torch.randn(1, 3, 32))
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.fc = nn.Linear(96, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(2).transpose(1, 2)  # (N, 16, 32)
        out, _ = self.attn(self.queries.expand(len(x), -1, -1), f, f, need_weights=False)
        return self.fc(out.flatten(1))


def test_a_cross_attention_is_counted_exactly_and_keeps_its_heads() -> None:
    torch.manual_seed(0)
    model, x = _Decoder().eval(), torch.randn(2, 3, 16, 16)
    space = ModelSpace(model, x)
    assert type(space.model.attn) is nn.MultiheadAttention and "attn" not in {g.id for g in space.groups}
    n, length, source, e = 2, 3, 16, 32
    attention = n * (length + 2 * source) * e * e + 2 * n * length * source * e + n * length * e * e
    want = n * 16 * 32 * 48 + attention + n * 96 * 10
    assert space.base_cost.macs == measure_cost(model, x).macs == want
