"""Models from outside the zoo through the CLI (torchvision by name, any class by
`_target_`), NiN, and the Lightning callback on a real Trainer."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import initlab
from initlab.errors import InitlabError
from tests.conftest import run_cli

pytest.importorskip("torchvision")

TV = ["model=torchvision", "model.arch=resnet18", "data.shape=[3,32,32]"]


def test_torchvision_resnet18_by_name_with_kaiming(run) -> None:
    summary, run_dir = run(*TV, "init=kaiming", "plots=true")
    assert summary["status"] == "ok" and summary["steps_done"] == 2
    touched = {r["module"] for r in summary["init"]}
    import torchvision

    ref = torchvision.models.resnet18(num_classes=10)
    weighted = {n for n, m in ref.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    assert weighted <= touched  # every conv and linear
    stats = initlab.load_run(run_dir).stats
    assert {"act", "grad", "update"} <= set(stats["kind"])
    assert not (run_dir / "theory.parquet").exists()  # residual adds: no prediction
    assert (run_dir / "plots" / "step0_std.png").exists()


def test_target_form_builds_any_module(run) -> None:
    summary, run_dir = run("model=target", "model._target_=torchvision.models.resnet18", "data.shape=[3,32,32]")
    assert summary["status"] == "ok" and summary["model"]["params"] > 10**6


def test_target_plain_chain_gets_a_theory_prediction(run) -> None:
    summary, run_dir = run("model=target", "model._target_=tests.test_external.TinyMLP", "data.shape=[16]",
                           "init=kaiming")
    assert summary["status"] == "ok"
    stats = initlab.load_run(run_dir).stats
    s0 = stats[(stats.step == 0) & (stats.kind == "act") & (stats.module_type == "Linear")]
    assert np.isfinite(s0["theory_std"]).all()


class TinyMLP(nn.Sequential):
    """A user's model: a plain chain of modules."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, num_classes))


@pytest.mark.parametrize("bn", ["false", "true"])
def test_nin_trains_with_and_without_bn(run, bn: str) -> None:
    summary, run_dir = run("model=nin", f"bn={bn}")
    assert summary["status"] == "ok"
    types = set(initlab.load_run(run_dir).stats["module_type"])
    assert ("BatchNorm2d" in types) == (bn == "true")


@pytest.mark.parametrize("args,fragment", [
    (["model=torchvision", "data.shape=[1,28,28]"], "take 3-channel images"),
    ([*TV, "bn=true"], "bn does not apply to model=torchvision"),
    (["model=torchvision", "model.arch=resnet9000", "data.shape=[3,32,32]"], "model.arch='resnet9000' is invalid"),
    (["model=target", "data.shape=[3,32,32]"], "needs model._target_"),
    (["model=target", "model._target_=no.such.Thing", "data.shape=[3,32,32]"], "could not be built"),
    (["model=target", "model._target_=torch.nn.Linear", "+model.in_features=32", "+model.out_features=10",
      "model.num_classes=null", "data.shape=[3,32,32]"], "returns (2, 3, 32, 10)"),
], ids=["channels", "bn-true", "arch", "no-target", "bad-target", "not-logits"])
def test_external_model_errors_name_what_is_wrong(run, args: list[str], fragment: str) -> None:
    with pytest.raises(InitlabError, match=re.escape(fragment)):
        run(*args)


def test_giving_bn_to_an_external_model_is_a_one_line_error(tmp_path: Path) -> None:
    """Even bn=false: the user asked for something that would silently do nothing."""
    proc = run_cli([*TV, "bn=false", "train.steps=1", "train.progress=false", "device=cpu"], tmp_path)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("initlab: error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-800:]
    assert "bn does not apply to model=torchvision" in lines[0] and "Traceback" not in proc.stderr


def test_build_model_takes_conf_defaults_for_missing_keys() -> None:
    from initlab.models import build_model

    model = build_model("resnet", {"blocks": [1, 1]}, (3, 16, 16), 10)
    assert model.fc.in_features == 2 * 16  # conf/model/resnet.yaml's width 16, two stages
    with pytest.raises(InitlabError, match="model='nope' is invalid: choose from"):
        build_model("nope", {}, (3, 16, 16), 10)


def test_lightning_callback_on_a_real_trainer(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from initlab.record.lightning import InitlabCallback

    class Lit(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def validation_step(self, batch, batch_idx):
            x, y = batch
            logits = self(x)
            self.log("val_loss", nn.functional.cross_entropy(logits, y))
            self.log("val_acc", (logits.argmax(1) == y).float().mean())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randint(0, 3, (64,), generator=g))
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    out = tmp_path / "lit"
    trainer = pl.Trainer(max_epochs=1, accumulate_grad_batches=2, callbacks=[InitlabCallback(out=out, telemetry="full")],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(Lit(), loader, loader)
    run = initlab.load_run(out)
    assert run.summary["status"] == "ok"
    assert sorted(run.stats["step"].unique()) == [0, 1, 2, 3]  # 8 batches / 2 = 4 optimizer steps
    act = run.stats[run.stats.kind == "act"]
    assert not act["layer"].str.contains("#").any()  # one row set per optimizer step
    assert act.groupby("step").size().nunique() == 1
    assert (run.stats.kind == "update").any()
    assert "val_loss" in run.metrics and np.isfinite(run.metrics["val_loss"]).any()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in trainer.lightning_module.modules()) == 0


@pytest.mark.parametrize("arch", ["googlenet", "densenet121", "vit_b_16", "convnext_tiny"])
def test_torchvision_builders_the_issue_names_take_cifar_sized_images(arch: str) -> None:
    from initlab.models import build_model

    model = build_model("torchvision", {"arch": arch}, (3, 32, 32), 10)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 10)  # plain logits, also in training mode
