"""Bad input, as a careless or hostile user gives it: one line on stderr, the documented exit code, nothing touched.

Every case runs the real CLI in-process against a real study (``existing``:
a SQLite file with two candidates) and checks the exit code, that stderr is
exactly one ``prunetune: error: ...`` line naming the problem, and that the
study's full dump is the same afterwards. Cases against other files (foreign,
damaged, read-only) also check those files are byte-identical afterwards.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from search.cli import main
from tests.search.conftest import dump

BAD, DAMAGED = 2, 3


@dataclass
class Ctx:
    """What a case may refer to: ``{cfg}``, ``{db}``, ``{tmp}`` and whatever its setup adds."""

    cfg: Path
    db: Path
    tmp: Path
    extra: dict[str, str] = field(default_factory=dict)
    watched: list[Path] = field(default_factory=list)  # other files that must stay byte-identical

    def fmt(self, text: str) -> str:
        return text.format(cfg=self.cfg, db=self.db, tmp=self.tmp, **self.extra)


Setup = Callable[[Ctx], None]


def _file(name: str, data: bytes) -> Setup:
    def make(c: Ctx) -> None:
        (c.tmp / name).write_bytes(data)
        c.extra["file"] = str(c.tmp / name)

    return make


def _config_plus(text: str, under: str = "") -> Setup:
    """A copy of the study's config with ``text`` added at its end, or right under the ``[under]`` header."""

    def make(c: Ctx) -> None:
        old = c.cfg.read_text()
        new = old.replace(f"[{under}]\n", f"[{under}]\n{text}") if under else old + text
        (c.tmp / "c.toml").write_text(new)
        c.extra["file"] = str(c.tmp / "c.toml")

    return make


def _weights(model: str, **kw: int) -> Setup:
    def make(c: Ctx) -> None:
        from evaluators import build_model

        path = c.tmp / "w.safetensors"
        save_file({k: v.contiguous() for k, v in build_model(model, **kw).state_dict().items()}, str(path))
        c.extra["file"] = str(path)

    return make


def _torch_weights(c: Ctx) -> None:
    from evaluators import build_model

    torch.save(build_model("zoo:resnet20", in_channels=3).state_dict(), c.tmp / "w.pt")
    c.extra["file"] = str(c.tmp / "w.pt")


def _image_folders(c: Ctx) -> None:
    for split in ("train", "val"):
        (c.tmp / "images" / split).mkdir(parents=True)
    c.extra["file"] = str(c.tmp / "images")


def _foreign(c: Ctx) -> None:
    path = c.tmp / "foreign.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
        con.execute("INSERT INTO users (name) VALUES ('ada')")
    c.extra["file"] = str(path)
    c.watched.append(path)


def _damaged(how: str) -> Setup:
    def make(c: Ctx) -> None:
        path = c.tmp / "damaged.db"
        with sqlite3.connect(f"file:{c.db}?mode=ro", uri=True) as src, sqlite3.connect(path) as dst:
            src.backup(dst)  # a consistent single-file copy of the study
        size = path.stat().st_size
        with path.open("r+b") as f:
            if how == "tail":  # the last 4 KB overwritten
                f.seek(size - 4096)
                f.write(os.urandom(4096))
            elif how == "truncated":
                f.truncate(size // 2)
            else:  # random bytes
                f.seek(0)
                f.write(os.urandom(size))
        c.extra["file"] = str(path)
        c.watched.append(path)

    return make


def _baseline_cache(c: Ctx) -> None:
    """A copy of the study's artifacts whose cached baseline is garbage."""
    art = c.tmp / "art"
    shutil.copytree(c.cfg.parent / "artifacts" / "baselines", art / "baselines")
    for w in (art / "baselines").glob("*.safetensors"):
        w.write_bytes(b"not a safetensors file")
    c.extra["file"] = str(art)


def _out_file(c: Ctx) -> None:
    (c.tmp / "taken").write_text("a file, not a folder")
    c.extra["file"] = str(c.tmp / "taken")


RUN = ["run", "{cfg}", "--quiet"]
# (id, argv, setup, exit code, message): every case distinct
CASES: list[tuple[str, list[str], Setup | None, int, str]] = [
    # --- the config file and its keys
    ("unknown-key", [*RUN, "--search.foo", "1"], None, BAD, "unrecognized arguments: --search.foo"),
    ("missing-config", ["run", "{tmp}/nope.toml"], None, BAD, "nope.toml' does not exist"),
    ("config-is-folder", ["run", "{tmp}"], None, BAD, "is a folder"),
    ("config-not-toml", ["run", "{file}"], _file("c.toml", b"[[[ nope"), BAD, "not valid TOML"),
    ("config-binary", ["run", "{file}"], _file("c.toml", b"\xff\xfe\x00garbage"), BAD, "not UTF-8 text"),
    ("unknown-section", ["run", "{file}"], _config_plus("\n[nope]\nx = 1\n"), BAD, "nope"),
    ("unknown-key-in-file", ["run", "{file}"], _config_plus("foo = 1\n", "search"), BAD, "search.foo"),
    ("candidates-0", [*RUN, "--search.candidates", "0"], None, BAD, "greater than or equal to 1"),
    ("candidates-text", [*RUN, "--search.candidates", "many"], None, BAD, "search.candidates"),
    ("sampler", [*RUN, "--search.sampler", "cmaes"], None, BAD, "'evolve' or 'random' (got 'cmaes')"),
    ("objective", [*RUN, "--search.objectives", "accuracy,speed"], None, BAD, "search.objectives"),
    ("importance", [*RUN, "--space.importance", "l3"], None, BAD, "space.importance"),
    ("method", [*RUN, "--space.rank.method", "cp"], None, BAD, "[space.rank] method"),
    ("methods", [*RUN, "--space.rank.methods", "svd,versatile3"], None, BAD, "[space.rank] methods"),
    ("methods-one", [*RUN, "--space.rank.methods", "svd"], None, BAD, "two or more different methods"),
    ("methods-no-method", [*RUN, "--space.rank.methods", "tt,versatile"], None, BAD, "must be one of methods"),
    ("method-flat", [*RUN, "--space.rank", "true", "--space.method", "cp"], None, BAD, "[space.rank] method"),
    ("recipe", [*RUN, "--evaluate.recipe", "layerwise"], None, BAD, "recipe must be one of finetune, blockwise"),
    ("blockwise-steps", [*RUN, "--evaluate.blockwise_steps", "0"], None, BAD, "evaluate.blockwise_steps"),
    ("max-ratio", [*RUN, "--space.prune.max_ratio", "1.5"], None, BAD, "[space.prune] max_ratio"),
    ("max-ratio-flat", [*RUN, "--space.max_ratio", "1.5"], None, BAD, "[space.prune] max_ratio"),
    (
        "table-key",
        ["run", "{file}"],
        _config_plus("\n[space.depth]\nmax_shar = 0.5\n"),
        BAD,
        "unknown config key 'space.depth.max_shar'; did you mean 'max_share'?",
    ),
    ("finetune-steps", [*RUN, "--evaluate.finetune_steps", "-1"], None, BAD, "evaluate.finetune_steps"),
    ("score", [*RUN, "--evaluate.score", "f1"], None, BAD, "evaluate.score"),
    ("pool-without-kl", [*RUN, "--evaluate.teacher_pool", "500"], None, BAD, "read only with evaluate.score = 'kl'"),
    (
        "teacher-pool",
        [*RUN, "--evaluate.score", "kl", "--evaluate.teacher_pool", "100000"],
        None,
        BAD,
        "a teacher pool of 100000 images needs 0 < n <",
    ),
    ("device", [*RUN, "--evaluate.device", "tpu"], None, BAD, "device must be auto, cpu, cuda, cuda:N or mps"),
    ("device-cuda", [*RUN, "--evaluate.device", "cuda:0"], None, BAD, "CUDA is not available"),
    ("seed-text", [*RUN, "--search.seed", "x"], None, BAD, "search.seed"),
    # --- budgets
    ("infeasible", [*RUN, "--budget.macs", "0.01%"], None, BAD, "is infeasible: the smallest achievable cost"),
    ("over-100", [*RUN, "--budget.macs", "150%"], None, BAD, "at most 100% of the base model"),
    ("no-unit", [*RUN, "--budget.macs", "40"], None, BAD, "which has no unit"),
    ("negative", [*RUN, "--budget.bytes", "-5MB"], None, BAD, "must be a positive number"),
    ("words", [*RUN, "--budget.params", "lots"], None, BAD, "got 'lots'"),
    ("unit", [*RUN, "--budget.bytes", "8 parsecs"], None, BAD, "unknown unit"),
    ("other-budget", [*RUN, "--budget.macs", "30%"], None, BAD, "exists with budget="),
    (
        "floor-words",
        [*RUN, "--search.floor", "low"],
        None,
        BAD,
        'floor must be a percentage of the base model like "10%"',
    ),
    ("floor-above-cap", [*RUN, "--search.floor", "60%"], None, BAD, "is above the tightest budget limit (50.0%"),
    ("floor-unreachable", [*RUN, "--search.floor", "0.001%"], None, BAD, "below the smallest cost this model can"),
    ("rungs-order", [*RUN, "--evaluate.rungs", "20,10"], None, BAD, "rungs must be at most 6 increasing"),
    ("other-objectives", [*RUN, "--search.objectives", "accuracy,params"], None, BAD, "exists with objectives"),
    # --- model and data specs
    ("zoo", [*RUN, "--model.spec", "zoo:nope"], None, BAD, "unknown zoo model 'nope'"),
    ("torchvision", [*RUN, "--model.spec", "torchvision:nope"], None, BAD, "unknown torchvision model 'nope'"),
    ("model-kind", [*RUN, "--model.spec", "resnet20"], None, BAD, "model spec must be 'zoo:<name>'"),
    ("model-module", [*RUN, "--model.spec", "no_such_pkg.models:build"], None, BAD, "cannot import module"),
    ("model-callable", [*RUN, "--model.spec", "tests.evaluators.factories:nope"], None, BAD, "has no callable"),
    ("model-raises", [*RUN, "--model.spec", "tests.evaluators.factories:broken_model"], None, BAD, "weights server"),
    ("data", [*RUN, "--data.spec", "nope"], None, BAD, "nope"),
    ("data-pair", [*RUN, "--data.spec", "tests.evaluators.factories:not_a_pair"], None, BAD, "must return (train"),
    ("data-empty", [*RUN, "--data.spec", "tests.evaluators.factories:empty"], None, BAD, "is empty"),
    ("imagefolder-missing", [*RUN, "--data.spec", "imagefolder:{tmp}/none"], None, BAD, "must contain train/"),
    ("imagefolder-empty", [*RUN, "--data.spec", "imagefolder:{file}"], _image_folders, BAD, "one subfolder per class"),
    ("fmnist-dir", [*RUN, "--data.spec", "fashion-mnist", "--data.data_dir", "{tmp}/x"], None, BAD, "fashion"),
    # --- weights
    ("weights-missing", [*RUN, "--model.weights", "{tmp}/w.safetensors"], None, BAD, "does not exist"),
    ("weights-garbage-pt", [*RUN, "--model.weights", "{file}"], _file("w.pt", os.urandom(512)), BAD, "never unpickles"),
    ("weights-garbage-st", [*RUN, "--model.weights", "{file}"], _file("w.safetensors", b"xx"), BAD, "not a valid"),
    ("weights-shape", [*RUN, "--model.weights", "{file}"], _weights("zoo:resnet20", in_channels=3), BAD, "shapes"),
    ("weights-shape-pt", [*RUN, "--model.weights", "{file}"], _torch_weights, BAD, "other shapes, e.g. conv1.weight"),
    ("weights-model", [*RUN, "--model.weights", "{file}"], _weights("zoo:vgg11_bn"), BAD, "does not match the model"),
    (
        "inspect-weights",
        ["inspect", "--model", "zoo:resnet20", "--input", "1,3,8,8", "--weights", "{file}"],
        _weights("zoo:resnet20", num_classes=4),
        BAD,
        "other shapes",
    ),
    ("baseline-cache", [*RUN, "--search.artifacts_dir", "{file}"], _baseline_cache, BAD, "cached baseline"),
    # --- storage URLs and files
    ("url-malformed", [*RUN, "--storage.url", "not a url"], None, BAD, "malformed storage URL"),
    ("url-backend", [*RUN, "--storage.url", "mysql://u@127.0.0.1/x"], None, BAD, "names backend 'mysql'"),
    ("url-memory", [*RUN, "--storage.url", "sqlite://"], None, BAD, "in-memory database"),
    ("url-unreachable", [*RUN, "--storage.url", "postgresql+psycopg://x@127.0.0.1:1/n"], None, BAD, "cannot open"),
    ("run-random-bytes", [*RUN, "--storage.url", "sqlite:///{file}"], _damaged("random"), DAMAGED, "is damaged"),
    ("run-tail", [*RUN, "--storage.url", "sqlite:///{file}"], _damaged("tail"), DAMAGED, "is damaged"),
    ("front-truncated", ["front", "--storage", "sqlite:///{file}"], _damaged("truncated"), DAMAGED, "is damaged"),
    ("status-tail", ["status", "--storage", "sqlite:///{file}"], _damaged("tail"), DAMAGED, "restore it"),
    ("front-foreign", ["front", "--storage", "sqlite:///{file}"], _foreign, BAD, "holds no PruneTune study"),
    ("status-foreign", ["status", "--storage", "sqlite:///{file}"], _foreign, BAD, "holds no PruneTune study"),
    ("report-foreign", ["report", "--storage", "sqlite:///{file}", "--out", "{tmp}/r"], _foreign, BAD, "no Prune"),
    (
        "export-foreign",
        ["export", "--storage", "sqlite:///{file}", "--trial", "0", "--out", "{tmp}/e"],
        _foreign,
        BAD,
        "holds no PruneTune study",
    ),
    ("front-missing", ["front", "--storage", "sqlite:///{tmp}/none.db"], None, BAD, "no study database at"),
    ("front-study", ["front", "{cfg}", "--study", "nope"], None, BAD, "no study named 'nope'"),
    # --- command-line arguments
    ("flag", [*RUN, "--nope", "1"], None, BAD, "unrecognized arguments: --nope"),
    ("command", ["frobnicate"], None, BAD, "invalid choice: 'frobnicate'"),
    ("run-no-config", ["run"], None, BAD, "the following arguments are required: config"),
    ("export-no-trial", ["export", "{cfg}", "--out", "{tmp}/e"], None, BAD, "required: --trial"),
    ("export-trial-text", ["export", "{cfg}", "--trial", "x", "--out", "{tmp}/e"], None, BAD, "invalid int value"),
    ("export-trial", ["export", "{cfg}", "--trial", "999", "--out", "{tmp}/e"], None, BAD, "no candidate for trial"),
    ("export-out-file", ["export", "{cfg}", "--trial", "0", "--out", "{file}"], _out_file, BAD, "is a file, not"),
    ("report-out-under-file", ["report", "{cfg}", "--out", "{file}/r"], _out_file, BAD, "cannot create --out"),
    ("report-out-proc", ["report", "{cfg}", "--out", "/proc/prunetune-report"], None, BAD, "cannot create --out"),
    ("inspect-input", ["inspect", "--model", "zoo:resnet20", "--input", "1,x"], None, BAD, "--input must be"),
    ("inspect-ratios", ["inspect", "--model", "zoo:resnet20", "--ratios", "1.5"], None, BAD, "--ratios must be"),
    ("inspect-importance", ["inspect", "--model", "zoo:resnet20", "--importance", "l3"], None, BAD, "invalid choice"),
    ("inspect-budget", ["inspect", "--model", "zoo:resnet20", "--budget", "flops=5"], None, BAD, "unknown budget"),
    ("finalize-what", ["finalize", "{cfg}"], None, BAD, "finalize needs --trial N (one or more) or --front"),
    ("finalize-trial", ["finalize", "{cfg}", "--trial", "999"], None, BAD, "no candidate for trial 999"),
    ("finalize-steps", ["finalize", "{cfg}", "--trial", "0", "--steps", "0"], None, BAD, "--steps must be a positive"),
    ("inspect-input-size", ["inspect", "--model", "zoo:resnet20", "--input", "1,3"], None, BAD, "do not fit"),
]


@pytest.mark.parametrize(("argv", "setup", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code_and_nothing_is_touched(
    existing: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    argv: list[str],
    setup: Setup | None,
    code: int,
    message: str,
) -> None:
    c = Ctx(cfg=existing, db=existing.parent / "study.db", tmp=tmp_path)
    if setup is not None:
        setup(c)
    before = dump(c.db)
    watched = {p: p.read_bytes() for p in c.watched}
    capfd.readouterr()
    try:
        got = main([c.fmt(a) for a in argv])
    except SystemExit as exc:  # argparse's errors
        got = int(exc.code or 0)
    err = capfd.readouterr().err.strip().splitlines()
    assert got == code, err
    assert len(err) == 1 and err[0].startswith("prunetune: error: ") and c.fmt(message) in err[0], err
    assert dump(c.db) == before
    for p, data in watched.items():
        assert p.read_bytes() == data, f"{p} was modified"


def test_there_are_at_least_sixty_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 60
    assert len({(tuple(c[1]), c[2]) for c in CASES}) == len(CASES)


def test_a_read_only_study_file_is_refused_before_any_work(
    existing: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ro.db"
    with sqlite3.connect(f"file:{existing.parent / 'study.db'}?mode=ro", uri=True) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here (it is the only way to make a file read-only for root)")
    try:
        data = db.read_bytes()
        capfd.readouterr()
        assert main([*(a.format(cfg=existing) for a in RUN), "--storage.url", f"sqlite:///{db}"]) == BAD
        err = capfd.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is read-only" in err[0], err
        assert db.read_bytes() == data
        assert main(["front", "--storage", f"sqlite:///{db}"]) == 0  # reading it still works
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
