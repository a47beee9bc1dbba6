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
