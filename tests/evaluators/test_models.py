from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from evaluators import build_model, load_weights
from spaces import UnsupportedModelError


def test_specs_build_modules() -> None:
    assert build_model("zoo:resnet20", in_channels=1, num_classes=7)(torch.randn(2, 1, 8, 8)).shape == (2, 7)
    tv = build_model("torchvision:mobilenet_v3_small", num_classes=5).eval()
    assert tv(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    assert isinstance(build_model("evaluators._zoo:resnet20"), torch.nn.Module)


@pytest.mark.parametrize(
    ("spec", "exc", "message"),
    [
        ("resnet20", ValueError, "model spec must be"),
        ("zoo:resnet21", ValueError, "unknown zoo model 'resnet21'; known: mobilenetv2"),
        ("torchvision:nope", ValueError, "unknown torchvision model 'nope'"),
        ("no_such_pkg.mod:f", ValueError, "cannot import module 'no_such_pkg.mod'"),
        ("builtins:dict", TypeError, "must return a torch.nn.Module, got dict"),
        ("builtins:input", UnsupportedModelError, "raised OSError"),
    ],
)
def test_bad_specs(spec: str, exc: type, message: str) -> None:
    with pytest.raises(exc, match=message):
        build_model(spec)


def test_weights_round_trip_without_pickle(tmp_path: Path) -> None:
    src = build_model("zoo:resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        dst = load_weights(build_model("zoo:resnet20").eval(), tmp_path / name)
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="does not match the model: .* missing keys"):
        load_weights(build_model("zoo:resnet32"), tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        load_weights(src, tmp_path / "missing.safetensors")
    torch.save({"model": src}, tmp_path / "pickled.pt")  # a pickled module is refused
    with pytest.raises(ValueError, match="not a weights-only torch file .* never unpickles code") as e:
        load_weights(src, tmp_path / "pickled.pt")
    assert "weights_only=False" not in str(e.value)  # torch's advice is never repeated


def test_save_weights_is_atomic_and_loads_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    from evaluators import save_weights

    model = build_model("zoo:resnet20", num_classes=10)
    path = save_weights(model, tmp_path / "w" / "m.safetensors")
    other = build_model("zoo:resnet20", num_classes=10)
    load_weights(other, path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))
    before = path.read_bytes()

    def dies_mid_write(tensors: dict, filename: str) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", dies_mid_write)
    with pytest.raises(KeyboardInterrupt):
        save_weights({"w": torch.ones(2)}, path)
    assert path.read_bytes() == before  # the old file, whole; no temporary file left behind
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]


def test_timm_specs_build_offline_and_load_weights_from_a_file(tmp_path: Path) -> None:
    src = build_model("timm:resnet10t", in_channels=1, num_classes=7).eval()
    x = torch.randn(2, 1, 32, 32)
    assert src(x).shape == (2, 7)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = load_weights(build_model("timm:resnet10t", in_channels=1, num_classes=7).eval(), tmp_path / "w.safetensors")
    torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)
    vit = build_model("timm:vit_tiny_patch16_224,img_size=32,patch_size=8,depth=2", num_classes=4).eval()
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 4) and len(vit.blocks) == 2


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:resnet_18", r"unknown timm model 'resnet_18' in timm 1\.\d+\.\d+; did you mean resnet18"),
        ("timm:qwertyuiop", r"unknown timm model 'qwertyuiop' .*\(timm.list_models\(\) lists them\)"),
        ("timm:resnet18,depth", r"'depth' is not a key=value argument"),
        ("timm:resnet18,pretrained=true", "pretrained is not taken .* come from model.weights"),
        ("timm:resnet18,checkpoint_path=/tmp/x.pth", "checkpoint_path is not taken"),
        ("timm:resnet18,no_such_argument=3", "timm could not build 'timm:resnet18,no_such_argument=3': "),
    ],
)
def test_bad_timm_specs_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises((ValueError, UnsupportedModelError), match=message) as err:
        build_model(spec)
    assert "\n" not in str(err.value)
