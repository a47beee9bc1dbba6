"""How good a candidate is: models, data and evaluation.

So far: the model zoo and model specs (``zoo:``, ``torchvision:``, import paths)
with pickle-free weight loading.
"""

from evaluators._models import build_model, load_weights
from evaluators._zoo import ZOO

__all__ = ["ZOO", "build_model", "load_weights"]
