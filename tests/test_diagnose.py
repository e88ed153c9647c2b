"""Diagnosis flags fire where the lessons say something is wrong, and only there."""

import json

from tests.conftest import only_run_dir, run_cli

DEEP_RELU = ["model=mlp", "model.depth=30", "model.width=256", "model.act=relu", "data.shape=[256]",
             "train.steps=0", "train.batch_size=64"]


def _flags(summary: dict) -> set[str]:
    return {f["flag"] for f in summary["flags"]}


def test_xavier_on_deep_relu_vanishes_kaiming_does_not(run) -> None:
    xavier, _ = run(*DEEP_RELU, "init=xavier")
    kaiming, _ = run(*DEEP_RELU, "init=kaiming")
    assert "vanishing_act" in _flags(xavier)
    assert _flags(kaiming) == set(), kaiming["flags"]


def test_n01_explodes_and_diverges(run) -> None:
    summary, _ = run("model=mlp", "model.depth=10", "model.width=256", "model.act=linear", "data.shape=[256]",
                     "train.steps=0", "init=normal", "init.std=1.0")
    assert {"exploding_act", "exploding_grad"} <= _flags(summary)


def test_too_large_learning_rate_is_flagged(run) -> None:
    summary, _ = run("model=mlp", "data.shape=[64]", "init=kaiming", "optim=sgd", "optim.lr=5.0",
                     "optim.momentum=0.0", "train.steps=3", "telemetry=full")
    assert "update_ratio" in _flags(summary) or summary["status"] == "diverged"


def test_flags_are_printed_and_stored(tmp_path) -> None:
    proc = run_cli([*DEEP_RELU, "init=xavier"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "vanishing_act" in proc.stderr
    summary = json.loads((only_run_dir(tmp_path / "outputs") / "summary.json").read_text())
    assert "vanishing_act" in _flags(summary)
