"""ONNX Runtime's weight-only quantizer (``MatMulNBits``), imported without its side effect on logging.

``onnxruntime.quantization.matmul_nbits_quantizer`` (ONNX Runtime 1.31) calls
``logging.basicConfig(level=logging.INFO)`` when it is imported. In a process
whose root logger has no handler yet (the ``prunetune`` program, a test, a
user's script) that installs one at INFO on stderr, and from then on every
library's informational messages are printed: the ONNX exporter's
``onnx_ir`` passes print one line per deduplicated initializer, hundreds for a
small language model. :func:`matmul_nbits_quantizer` imports the module and
puts the root logger's handlers and level back as they were, so the process's
logging stays the user's. The quantizer's own messages are still its logger's
(``export_decoder`` quiets them while it runs).
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["matmul_nbits_quantizer"]


def matmul_nbits_quantizer() -> Any:
    """The class ``MatMulNBitsQuantizer``, the root logger left as it was (see the module docs)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    return MatMulNBitsQuantizer
