"""``prunetune inspect`` on a language model: its layers, exact costs at a context, the one-rule plans at a budget."""

from __future__ import annotations

import pytest

from evaluators import build_model
from search.cli import main
from search.cli._inspect_decoder import si
from spaces import Plan
from spaces.decoder import DecoderSpace


def test_inspect_prints_layers_costs_and_the_one_rule_plans(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--model", "hf-tiny:llama", "--context", "1024", "--memory", "60%"]) == 0
    out = capsys.readouterr().out
    space = DecoderSpace(build_model("hf-tiny:llama"), context=1024)
    assert "2 decoder layers (llama layout)" in out and "model.layers.1" in out
    dense = space.dense
    assert f"{si(dense.kv_bytes)}B" in out and f"{si(dense.memory_bytes)}B" in out  # 2 x 1024 x 2 x 32 x 4 bytes
    assert dense.kv_bytes == 2 * 1024 * 2 * 32 * 4
    half = space.cost(space.uniform_plan(0.5))
    assert f"{si(half.memory_bytes)}B" in out
    fitted = space.cost(space.fit(space.uniform_plan(0.0), space.memory_limit("60%")))
    assert "uniform, fitted" in out and f"{si(fitted.memory_bytes)}B" in out
    assert "global" in out and "depth" in out
    assert space.cost(Plan()) == dense


def test_inspect_measures_each_plans_tokens_per_second_on_this_machine(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from evaluators import _lm

    timed: list[tuple[int, int]] = []  # per plan measured: the model's MLP width, and the context timed
    real = _lm.tokens_per_second

    def spy(model, context: int, new_tokens: int = 32) -> tuple[float, float]:  # type: ignore[no-untyped-def]
        timed.append((model.model.layers[0].mlp.up_proj.out_features, context))
        return real(model, context, new_tokens)

    monkeypatch.setattr(_lm, "tokens_per_second", spy)
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["inspect", "--model", "hf-tiny:llama", "--context", "16", "--ratios", "0.5", "--measure"]) == 0
    out = capsys.readouterr().out
    assert timed == [(128, 16), (64, 16)]  # the dense model and the uniform plan, each built and timed
    assert "prefill tok/s" in out and "decode tok/s" in out and "measured here: prefill of 16 tokens" in out
    rows = [line for line in out.splitlines() if line.lstrip("│ ").startswith(("dense", "uniform 0.5"))]
    for row in rows:  # two measured speeds at the end of each plan's row, positive
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert float(cells[-1].replace(",", "")) > 0 and float(cells[-2].replace(",", "")) > 0
    assert len(rows) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "hf-tiny:llama", "--context", "0"],
            "argument --context: must be an integer of at least 1, got '0'",
        ),
        (["--model", "hf:/no/such/dir"], "hf model directory '/no/such/dir' does not exist"),
        (["--model", "hf-tiny:llama", "--memory", "lots"], "memory budget must be a share in (0, 1]"),
        (["--model", "hf-tiny:falcon"], "hf-tiny family must be one of llama, mistral"),
        (
            ["--model", "hf-tiny:gpt2", "--context", "250", "--measure"],
            "--measure times --context 250 tokens and 32 more, but the model has 256 positions: use --context 224",
        ),
    ],
)
def test_bad_language_model_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(["inspect", *argv])
    except SystemExit as exc:  # argparse's own checks exit from the parser
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
