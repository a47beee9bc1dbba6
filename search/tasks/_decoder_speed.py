"""A language model's latency model on this machine: measured once, kept in the store, shown by ``prunetune profile``.

:func:`spaces.decoder.profile_decoder` learns prefill and decode time from
the model built at a couple of dozen plans; this module keeps what it learned
in the study store's profile table (``prunetune_profiles``) under
:meth:`~spaces.decoder.DecoderLatency.key_for` (the model's architecture, the
device, the thread count, the context and the decoded tokens), so that every
study of the same model on the same kind of machine reads it instead of
measuring again, and prints it as ``prunetune profile`` does for vision
models: the fitted coefficients and every measured plan beside its prediction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from spaces.decoder import DecoderLatency, DecoderSpace
    from storage import StudyStore

__all__ = ["decoder_latency", "show_decoder_latency"]


def decoder_latency(
    space: DecoderSpace, store: StudyStore, *, threads: int, runs: int = 5, force: bool = False
) -> tuple[DecoderLatency, bool]:
    """The latency model of ``space``'s model at its context on this machine's CPU with ``threads`` threads, from
    ``store``, measured and stored first if it holds none (or ``force``); and whether it was measured now."""
    from spaces.decoder import NEW_TOKENS, DecoderLatency, profile_decoder

    key = DecoderLatency.key_for(space.model, "cpu", threads=threads, context=space.context, new_tokens=NEW_TOKENS)
    stored = None if force else store.profile(key)
    if stored is not None:
        return DecoderLatency.from_json(stored), False
    fitted = profile_decoder(space, device="cpu", threads=threads, runs=runs)
    if force:
        store.delete_profile(key)
    text = store.save_profile(key, fitted.to_json(), device="cpu", runtime="torch", threads=threads, batch=1)
    return DecoderLatency.from_json(text), True


def show_decoder_latency(console: Console, prof: DecoderLatency, *, how: str) -> None:
    """Print the latency model: what it is, its coefficients, and each measured plan against its prediction."""
    from rich.table import Table

    console.print(
        f"decoder latency model on {prof.device}, torch, {prof.threads} threads, batch 1, prefill of "
        f"{prof.context} tokens, decode of {prof.new_tokens} with the KV cache: {how}"
    )
    for name, c in (("prefill ms", prof.prefill), ("decode ms per token", prof.decode)):
        per = ", ".join(f"{g}: {t:.4g}" for g, t in enumerate(c[1:-1], start=1))
        console.print(f"{name} = {c[0]:.4g} + per kept layer by its key-value groups ({per}) + {c[-1]:.4g} x "
                      "projection GMACs")  # fmt: skip
    pre, dec = prof.error
    console.print(f"largest error on the held-out plans: prefill {100 * pre:.1f} %, decode {100 * dec:.1f} %")
    table = Table(title="measured plans (held out: not read by the fit)")
    for col in ("plan", "", "prefill tok/s", "predicted", "decode tok/s", "predicted"):
        table.add_column(col, justify="left" if col in ("plan", "") else "right")
    for s in prof.samples:
        table.add_row(
            s.label,
            "" if s.fitted else "held out",
            f"{prof.context / s.prefill_ms * 1e3:,.0f}",
            f"{prof.context / s.predicted_prefill_ms * 1e3:,.0f}",
            f"{1e3 / s.decode_ms:,.1f}",
            f"{1e3 / s.predicted_decode_ms:,.1f}",
        )
    console.print(table)
