"""initlab.watch on models and loops that are not initlab's: the README example as written,
torchvision's ResNet-18, in-place ops on both reducer paths, and the awkward cases."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.errors import RunDirTaken
from initlab.report.cli import main as report_main

README = Path(__file__).resolve().parents[1] / "README.md"
OWN_MODEL = Path(__file__).resolve().parents[1] / "docs" / "own-model.md"


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


@pytest.mark.parametrize("page, heading", [(README, "## Use it on your own model"), (OWN_MODEL, "# Your own model")],
                         ids=["README", "docs/own-model.md"])
def test_readme_own_model_example_runs_as_written(tmp_path: Path, monkeypatch, page: Path, heading: str) -> None:
    text = page.read_text()
    section = text[text.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, page.name, "exec"), {})
    run = initlab.load_run(tmp_path / "runs" / "mynet")
    assert run.summary["status"] == "ok" and run.summary["steps_done"] == 64
    assert {"act", "grad", "weight", "weight_grad", "update"} <= set(run.stats["kind"])
    assert list(run.metrics["step"]) == list(range(64))  # a metrics row per step
    assert np.isfinite(run.metrics["loss"]).all() and "flags" in run.summary
    assert (tmp_path / "runs" / "mynet" / "plots" / "step0_std.png").exists()


@pytest.mark.parametrize("queued", [False, True], ids=["cpu-kernels", "queued-ops"])
def test_inplace_relu_cannot_change_recorded_outputs(queued: bool) -> None:
    """conv -> BN -> ReLU(inplace): each layer's act row is of its own output."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 4))
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        conv = model[0](x)
        bn = F.batch_norm(conv, None, None, model[1].weight, model[1].bias, training=True)
    w = initlab.watch(model, telemetry={"hist": {"enabled": False}}, queued=queued)
    with w.step(0):
        model(x).square().mean().backward()
    w.flush()
    cols = w.collected[0][0]
    act = {str(layer): i for i, (layer, kind) in enumerate(zip(cols["layer"], cols["kind"])) if kind == "act"}
    for layer, ref in (("0", conv), ("1", bn), ("2", bn.clamp_min(0))):
        i = act[layer]
        assert cols["mean"][i] == pytest.approx(ref.mean().item(), rel=1e-4, abs=1e-6), layer
        assert cols["std"][i] == pytest.approx(ref.std().item(), rel=1e-4), layer
        assert cols["min"][i] == pytest.approx(ref.min().item(), rel=1e-5, abs=1e-6), layer
    assert cols["min"][act["1"]] < 0  # BN's output really has negatives: the ReLU did not reach it


def test_torchvision_resnet18_in_a_user_loop(tmp_path: Path) -> None:
    tvm = pytest.importorskip("torchvision.models")
    torch.manual_seed(0)
    model = tvm.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    report = initlab.apply_init(model, "kaiming")
    assert {r["module"] for r in report} >= {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    out = tmp_path / "r18"
    # step 0's conv outputs, directly, before any update (training mode: BN on batch statistics)
    ref: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: ref.__setitem__(n, o.detach().clone()))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    model.load_state_dict(state)  # BN running statistics as they were
    with initlab.watch(model, opt, out=out, telemetry="full", total_steps=3) as w:
        for step in range(3):
            with w.step(step):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            w.log(loss=loss)
    assert _hooks_left(model) == 0 and not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    run = initlab.load_run(out)
    leaves = {n for n, m in model.named_modules() if n and not any(m.children())}
    acts = run.stats[(run.stats.kind == "act") & (run.stats.step == 0)]
    assert leaves == {layer.split("#")[0] for layer in acts["layer"]}  # every leaf; a reused ReLU as relu#1
    for name, t in ref.items():
        row = acts[acts.layer == name].iloc[0]
        assert row["std"] == pytest.approx(t.std().item(), rel=1e-4), name
    assert len(run.stats[run.stats.kind == "update"]) > 0
    assert run.summary["status"] == "ok"
    assert report_main([str(out)]) == 0 and (out / "plots" / "step0_std.png").exists()


class _Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.out = nn.Linear(6, 2)
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)
        self.tuple_out = _TupleOut()
        self.none_out = _NoneOut()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.lin(x))        # functional activation: no module, no row of its own
        h = self.lin(h)                # the same module again: rows named lin#1
        h, _ = self.tuple_out(self.frozen(h))
        self.none_out(h)
        return self.out(h)


class _TupleOut(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return x * 2, {"aux": x}


class _NoneOut(nn.Module):
    def forward(self, x: torch.Tensor) -> None:
        return None


def test_awkward_modules_and_loops() -> None:
    torch.manual_seed(0)
    model = _Twice()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    w = initlab.watch(model, opt, telemetry="full")
    x = torch.randn(4, 6)
    with w.step(0):
        with torch.no_grad():  # a forward under no_grad first: activation rows, no gradient rows
            model(x)
    with w.step(1):  # gradient accumulation: two backwards, one optimizer step
        for _ in range(2):
            model(x).sum().backward()
        opt.step()
        opt.zero_grad()  # inside the block: the recorded weight gradients are not touched
    w.flush()
    (s0, _), (s1, _) = w.collected
    assert "grad" not in set(s0["kind"]) and "lin#1" in set(s0["layer"])
    layers1 = list(s1["layer"][s1["kind"] == "act"])
    assert layers1 == ["lin", "lin#1", "frozen", "tuple_out", "out"]  # one pass recorded, None skipped
    assert "frozen" not in set(s1["layer"][s1["kind"] == "weight"])  # frozen: no parameter rows
    wg = (s1["kind"] == "weight_grad") & (s1["param"] == "weight")
    assert np.all(s1["std"][wg] > 0)  # taken before zero_grad ran
    assert (s1["kind"] == "update").sum() == len(list(p for p in model.parameters() if p.requires_grad))
    assert _hooks_left(model) == 0


def test_without_optimizer_no_update_rows_and_exceptions_fail_cleanly(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    out = tmp_path / "boom"
    with pytest.raises(RuntimeError, match="boom"):
        with initlab.watch(model, out=out, telemetry="full", plots=False) as w:
            with w.step(0):
                model(torch.randn(3, 4)).sum().backward()
            w.log(loss=1.0)
            with w.step(1):
                model(torch.randn(3, 4))
                raise RuntimeError("boom")
    assert _hooks_left(model) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]
    run = initlab.load_run(out)
    assert set(run.stats["step"]) == {0} and "update" not in set(run.stats["kind"])
    assert {"weight", "weight_grad"} <= set(run.stats["kind"])


def test_telemetry_given_as_preset_dict_or_config_and_unlogged_steps_not_read() -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    cfg = initlab.TelemetryConfig.of({"first": 1, "every": 1000, "log_points": 0})
    assert cfg.every == 1000 and cfg.hist is not None  # the rest from the default preset
    for spec in ("off", cfg, {"first": 1, "every": 1000}):
        w = initlab.watch(model, telemetry=spec)
        for step in range(3):
            with w.step(step):
                loss = model(torch.randn(2, 3)).sum()
                loss.backward()
            w.log(loss=loss)
            if step == 1:  # unlogged: the row waits with its tensor unread
                assert spec == "off" or isinstance(w._pending_rows[-1]["loss"], torch.Tensor)
        w.flush()
        assert [r["step"] for r in w.metrics] == [0, 1, 2] and isinstance(w.metrics[1]["loss"], float)
        assert len(w.collected) == (0 if spec == "off" else 1)


def test_a_telemetry_config_round_trips_through_its_dict_histograms_off_included() -> None:
    for spec in ("full", {"hist": None}, {"hist": {"enabled": False}}):
        cfg = initlab.TelemetryConfig.of(spec)
        again = initlab.TelemetryConfig.of(cfg.as_dict())
        assert again.as_dict() == cfg.as_dict()
    assert initlab.TelemetryConfig.of({"hist": None}).hist is None
    assert initlab.TelemetryConfig.of({"hist": {"enabled": False}}).hist is None


def test_nonfinite_loss_in_a_user_loop_is_diverged_not_a_crash(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    with initlab.watch(model, out=tmp_path / "nan", plots=False) as w:
        for step in range(3):
            with w.step(step):
                loss = model(torch.randn(2, 3)).sum() * (math.inf if step == 2 else 1.0)
            w.log(loss=loss)
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["diverged"]["step"] == 2
    assert any(f["flag"] == "diverged" for f in summary["flags"])


def test_watch_refuses_a_directory_that_holds_a_run(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 3))
    with initlab.watch(model, out=tmp_path / "x", plots=False) as w:
        with w.step(0):
            model(torch.randn(2, 3))
    with pytest.raises(RunDirTaken, match="already holds a run"):
        initlab.watch(model, out=tmp_path / "x")


def test_log_takes_numbers_or_one_element_tensors() -> None:
    w = initlab.watch(nn.Linear(2, 2))
    with w.step(0):
        pass
    with pytest.raises(initlab.errors.InitlabError, match=r"w.log\(loss=...\) takes real numbers or one-element real tensors, not a tensor of shape \[3\]"):
        w.log(loss=torch.ones(3))
    w.log(loss=torch.ones(1, 1), note="a string is kept as it is")
    w.flush()
    assert w.metrics[0]["loss"] == 1.0 and w.metrics[0]["note"].startswith("a string")
