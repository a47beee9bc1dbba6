"""Decoder-only language models: the family layouts, a plan's kept structures and surgery, exact costs.

``from spaces.decoder import apply_decoder_plan, decoder_cost, layout_of`` (this package imports torch).
"""

from spaces.decoder._choice import (
    DecoderChoice,
    apply_decoder_plan,
    decoder_groups,
    kept_count,
    magnitude,
    projection_shapes,
    resolve,
)
from spaces.decoder._footprint import DecoderCost, decoder_cost
from spaces.decoder._layout import (
    LAYOUTS,
    AttentionView,
    BertLayout,
    DecoderLayout,
    Gpt2Layout,
    LlamaLayout,
    MlpView,
    layout_of,
    narrowed,
    register_layout,
)
from spaces.decoder._plans import DecoderSpace
from spaces.decoder._speed import (
    NEW_TOKENS,
    DecoderLatency,
    LatencySample,
    pass_times,
    profile_decoder,
    tokens_per_second,
)

__all__ = [
    "LAYOUTS",
    "NEW_TOKENS",
    "AttentionView",
    "BertLayout",
    "DecoderChoice",
    "DecoderCost",
    "DecoderLatency",
    "DecoderLayout",
    "DecoderSpace",
    "Gpt2Layout",
    "LatencySample",
    "LlamaLayout",
    "MlpView",
    "apply_decoder_plan",
    "decoder_cost",
    "decoder_groups",
    "kept_count",
    "layout_of",
    "magnitude",
    "narrowed",
    "pass_times",
    "profile_decoder",
    "projection_shapes",
    "register_layout",
    "resolve",
    "tokens_per_second",
]
