"""How good a candidate is: data, models, baseline training and evaluators.

Data (:func:`load_data`): ``digits``, ``fashion-mnist``, ``synthetic``,
``imagefolder:/path``, ``package.module:factory``, each with train, validation
(what the search selects on) and test (reported numbers only) splits. Models
(:func:`build_model`): ``zoo:<name>``, ``torchvision:<name>``, ``timm:<name>``,
``package.module:factory``. Evaluators
share one contract (:class:`Evaluator`): ``evaluate(model, context) -> Metrics``.
"""

from evaluators._base import COMPLETE, FAIL, PRUNED, Context, Evaluator, Metrics, resolve_device, seed_everything
from evaluators._blockwise import BlockwiseTraining, block_error, changed_blocks
from evaluators._data import DEFAULT_FASHION_MNIST_DIR, DataBundle, fashion_mnist_split, load_data, read_idx
from evaluators._evaluators import (
    Accuracy,
    BNRecalibration,
    FineTune,
    Latency,
    Pipeline,
    default_evaluator,
    evaluate_accuracy,
    evaluate_samples,
)
from evaluators._models import build_model, load_weights, save_weights
from evaluators._teacher import Scored, TeacherPool, bootstrap_se, paired
from evaluators._train import Baseline, Recipe, baseline_key, train_baseline
from evaluators._zoo import ZOO

__all__ = [
    "COMPLETE",
    "DEFAULT_FASHION_MNIST_DIR",
    "FAIL",
    "PRUNED",
    "ZOO",
    "Accuracy",
    "BNRecalibration",
    "Baseline",
    "BlockwiseTraining",
    "Context",
    "DataBundle",
    "Evaluator",
    "FineTune",
    "Latency",
    "Metrics",
    "Pipeline",
    "Recipe",
    "Scored",
    "TeacherPool",
    "baseline_key",
    "block_error",
    "bootstrap_se",
    "build_model",
    "changed_blocks",
    "default_evaluator",
    "evaluate_accuracy",
    "evaluate_samples",
    "fashion_mnist_split",
    "load_data",
    "load_weights",
    "paired",
    "read_idx",
    "resolve_device",
    "save_weights",
    "seed_everything",
    "train_baseline",
]
