"""Models for the space tests, built here so that ``tests/spaces`` depends on ``spaces`` and torch only.

The CIFAR-style nets have the module names the tests refer to (``conv1``,
``layer2.0.conv1``, ``features.2``, ``fc``, ``classifier``); torchvision models
are built untrained (``weights=None``).
"""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

__all__ = ["ARCHS", "MODELS", "torchvision_model", "vit_tiny"]


def _conv_bn(cin: int, cout: int, stride: int = 1, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]


class _Block(nn.Module):
    """ResNet basic block with a projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, stride)
        self.conv2, self.bn2 = _conv_bn(cout, cout)
        self.relu = nn.ReLU(inplace=True)
        changes = stride != 1 or cin != cout
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, stride, k=1)) if changes else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(y + self.shortcut(x))


class ResNet20(nn.Module):
    """He et al.'s CIFAR ResNet-20: 3 stages of 3 blocks, widths 16/32/64."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(3, 16)
        self.relu = nn.ReLU(inplace=True)
        widths = [16, 16, 32, 64]
        for s in (1, 2, 3):
            blocks = [_Block(widths[s - 1] if b == 0 else widths[s], widths[s], 2 if s > 1 and b == 0 else 1)
                      for b in range(3)]  # fmt: skip
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(64, num_classes)
        convs = [m for m in self.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:  # He init, in module order (the zoo's ResNet-20 draws the same weights)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            h = stage(h)
        return self.fc(self.pool(h).flatten(1))


class _Stack(nn.Module):
    """``features`` -> global average pool -> linear ``classifier``."""

    def __init__(self, features: list[nn.Module], width: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def vgg_bn(cfg: str, width: float = 1.0, num_classes: int = 10) -> nn.Module:
    """VGG with BatchNorm; ``cfg`` is a space-separated list of widths and ``M`` (max-pool)."""
    layers: list[nn.Module] = []
    cin = 3
    for tok in cfg.split():
        if tok == "M":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        cout = max(1, int(int(tok) * width))
        layers += [*_conv_bn(cin, cout), nn.ReLU(inplace=True)]
        cin = cout
    return _Stack(layers, cin, num_classes)


def plain8(base: int = 4, num_classes: int = 10) -> nn.Module:
    """The channel-pruning tutorial's plain net: eight 3x3 Conv-ReLU (no BN), widths doubling from ``base``."""
    layers: list[nn.Module] = []
    for i in range(8):
        layers += [nn.Conv2d(3 if i == 0 else base * 2 ** (i - 1), base * 2**i, 3, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.MaxPool2d(2, ceil_mode=True)] if i % 2 else []
    return _Stack(layers, base * 2**7, num_classes)


_VGG11 = "64 M 128 M 256 256 M 512 512 M 512 512 M"
_VGG16 = "64 64 M 128 128 M 256 256 256 M 512 512 512 M 512 512 512 M"

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": ResNet20,
    "vgg11_bn": lambda width=1.0: vgg_bn(_VGG11, width),
    "vgg16_bn": lambda width=1.0: vgg_bn(_VGG16, width),
    "plain8": plain8,
}


def vit_tiny() -> nn.Module:
    """torchvision's VisionTransformer at a test size: 2 layers, 4 heads of 16, MLP 128, 8x8 patches of 32x32."""
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=10
    )


def torchvision_model(name: str) -> nn.Module:
    """An untrained torchvision model with 10 classes (googlenet without its auxiliary heads)."""
    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **extra)


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: torchvision_model(name)


# name -> (factory, input size): the architectures every space test runs over, at small input sizes
ARCHS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "plain8": (lambda: plain8(base=4), 32),
    "vgg11_bn": (lambda: MODELS["vgg11_bn"](width=0.25), 32),
    "vgg16_bn": (lambda: MODELS["vgg16_bn"](width=0.25), 32),
    "resnet20": (ResNet20, 32),
    "vit_tiny": (vit_tiny, 32),
    **{
        name: (_tv(name), 64 if name == "squeezenet1_1" else 32)
        for name in (
            "resnet18",
            "resnet50",
            "mobilenet_v2",
            "mobilenet_v3_small",
            "efficientnet_b0",
            "densenet121",
            "squeezenet1_1",
            "googlenet",
            "shufflenet_v2_x1_0",
            "regnet_y_400mf",
            "convnext_tiny",
        )
    },
}
