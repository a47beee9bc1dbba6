"""Language models from a local directory, offline, and tiny random ones for tests: the ``hf:`` model specs.

* ``hf:PATH`` loads a decoder-only model from a local directory holding
  ``config.json`` and safetensors weights (what ``save_pretrained`` writes),
  with ``transformers``: nothing is downloaded (``local_files_only``: the hub
  is never asked), **no code from the directory is run**
  (``trust_remote_code=False``; a config that names its own code in
  ``auto_map`` is refused before anything is built), and weights are read from
  safetensors only, never from a pickle.
* ``hf-tiny:FAMILY`` builds a small randomly initialized model of a family from
  a config written here (``llama``, ``qwen2``, ``qwen3``, ``mistral``,
  ``gpt2``; ``bert``, an encoder): two layers, hidden width 64, grouped-query
  attention where the family has it. Tests and examples use it; it needs no file.

A BERT-style encoder (``ENCODER_TYPES``) is read as a sequence classifier
(``...ForSequenceClassification``, its ``num_labels`` from the config); every
other model as a causal language model.

Both return the ``transformers`` model itself (``...ForCausalLM``), in eval mode,
with eager attention (the same products on every machine, and the ones
:func:`spaces.decoder.decoder_cost` counts). Needs the ``llm`` extra.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from torch import nn

from spaces import UnsupportedModelError

__all__ = ["ENCODER_TYPES", "TINY_FAMILIES", "hf_model", "tiny_model"]

# the families hf-tiny builds: their config class and the fields that differ from the shared ones
TINY_FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {"num_key_value_heads": 2}),
    "mistral": ("MistralConfig", {"num_key_value_heads": 2, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", {"num_key_value_heads": 2, "head_dim": 16}),
    # byte-level: no special tokens (GPT-2's default ids, 50256, lie outside 256 bytes)
    "gpt2": (
        "GPT2Config",
        {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 256, "bos_token_id": None, "eos_token_id": None},
    ),
    # an encoder for classification (two labels): BertForSequenceClassification
    "bert": ("BertConfig", {"num_labels": 2, "pad_token_id": 0}),
}
ENCODER_TYPES = ("bert",)  # the model types read as encoders for sequence classification, not causal models
_SHARED = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}


def _transformers() -> Any:
    """The ``transformers`` module, its progress bars and notices off (PruneTune reports its own progress)."""
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        raise UnsupportedModelError("hf: models need the transformers package (pip install -e '.[llm]')") from None
    return transformers


@contextmanager
def _quiet() -> Iterator[None]:
    """``transformers``' warnings kept from the user while it builds or loads a model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _read_config(path: Path) -> dict[str, Any]:
    """``config.json`` of a model directory, checked before ``transformers`` sees it (one-line errors)."""
    if not path.is_dir():
        raise UnsupportedModelError(f"hf model directory {str(path)!r} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UnsupportedModelError(f"hf model directory {str(path)!r} has no config.json")
    try:
        config = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(f"{cfg_file} is not readable JSON: {exc}") from None
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{cfg_file} must hold a JSON object")
    if "auto_map" in config:
        raise UnsupportedModelError(
            f"the model in {str(path)!r} needs its own code (auto_map in config.json); "
            "PruneTune never runs code from a model directory"
        )
    if not any(path.glob("*.safetensors")):
        raise UnsupportedModelError(f"hf model directory {str(path)!r} has no .safetensors weights")
    return config


def hf_model(path: str | Path) -> nn.Module:
    """The causal language model saved in the local directory ``path`` (see the module docs)."""
    p = Path(path).expanduser()
    config = _read_config(p)
    tf = _transformers()
    model_type = config.get("model_type")
    encoder = model_type in ENCODER_TYPES
    if not encoder and model_type not in tf.models.auto.modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"hf model type {model_type!r} in {str(p)!r} is not a causal language model (nor one of the encoders "
            f"read for classification: {', '.join(ENCODER_TYPES)})"
        )
    auto = tf.AutoModelForSequenceClassification if encoder else tf.AutoModelForCausalLM
    with _quiet():
        try:
            model = auto.from_pretrained(
                str(p),
                local_files_only=True,
                trust_remote_code=False,
                use_safetensors=True,
                attn_implementation="eager",
            )
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsupportedModelError(f"cannot load the hf model in {str(p)!r}: {first}") from None
    return model.eval()


def tiny_model(family: str, *, seed: int = 0, **overrides: Any) -> nn.Module:
    """A small randomly initialized causal language model of ``family`` (see the module docs)."""
    import torch

    if family not in TINY_FAMILIES:
        raise UnsupportedModelError(f"hf-tiny family must be one of {', '.join(TINY_FAMILIES)}, got {family!r}")
    tf = _transformers()
    cls_name, fields = TINY_FAMILIES[family]
    kwargs = {**({} if family == "gpt2" else _SHARED), **fields, **overrides}
    if family == "gpt2":
        kwargs.setdefault("vocab_size", _SHARED["vocab_size"])
    config = getattr(tf, cls_name)(**kwargs, attn_implementation="eager")
    with _quiet(), torch.random.fork_rng():
        torch.manual_seed(seed)
        auto = tf.AutoModelForSequenceClassification if family in ENCODER_TYPES else tf.AutoModelForCausalLM
        model = auto.from_config(config)
    return model.eval()
