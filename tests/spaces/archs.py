"""The architectures every space test runs over, at small input sizes."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from evaluators import ZOO, build_model


def _tv(name: str) -> Callable[[], nn.Module]:
    return lambda: build_model(f"torchvision:{name}", num_classes=10)


# name -> (factory, input size)
ARCHS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "plain8": (lambda: ZOO["plain8"](base=4), 32),
    "vgg11_bn": (lambda: ZOO["vgg11_bn"](width=0.25), 32),
    "vgg16_bn": (lambda: ZOO["vgg16_bn"](width=0.25), 32),
    "resnet20": (ZOO["resnet20"], 32),
    "resnet18": (_tv("resnet18"), 32),
    "resnet50": (_tv("resnet50"), 32),
    "mobilenet_v2": (_tv("mobilenet_v2"), 32),
    "mobilenet_v3_small": (_tv("mobilenet_v3_small"), 32),
    "efficientnet_b0": (_tv("efficientnet_b0"), 32),
    "densenet121": (_tv("densenet121"), 32),
    "squeezenet1_1": (_tv("squeezenet1_1"), 64),
    "googlenet": (_tv("googlenet"), 32),
    "shufflenet_v2_x1_0": (_tv("shufflenet_v2_x1_0"), 32),
    "regnet_y_400mf": (_tv("regnet_y_400mf"), 32),
    "convnext_tiny": (_tv("convnext_tiny"), 32),
}
