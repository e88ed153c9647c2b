"""Normalisation beyond BatchNorm: every zoo model takes every norm, initlab's norm layers equal
torch's, the statistics they hand telemetry equal a direct computation, the ViT with pre- and
post-LN, and the learning-rate warm-up and cosine schedule."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.errors import InitlabError
from initlab.models import build_model
from initlab.nn.kinds import NORMS
from initlab.nn.norms import GroupNorm, InstanceNorm2d, LayerNorm, LayerNorm2d, RMSNorm
from initlab.telemetry import Telemetry, TelemetryConfig
from initlab.train import lr_factor

ZOO = ["mlp", "conv4", "lenet", "alexnet", "vgg", "resnet", "nin"]
NORM_NAMES = ["none", "batch", "layer", "group", "instance", "rms"]
EXPECTED = {"batch": (nn.BatchNorm1d, nn.BatchNorm2d), "layer": (LayerNorm, LayerNorm2d), "group": (GroupNorm,),
            "instance": (InstanceNorm2d,), "rms": (RMSNorm,)}


def _train_steps(model: nn.Module, shape: tuple[int, ...]) -> list[float]:
    """The loss on one fixed batch before each of five SGD steps and after the last (finite, and
    lower at the end: the model learns)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(F.cross_entropy(model(x), y).item())
    assert losses[-1] < losses[0], losses
    return losses


@pytest.mark.parametrize("norm", NORM_NAMES)
@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_takes_every_norm_and_trains(name: str, norm: str) -> None:
    shape = (64,) if name == "mlp" else (3, 32, 32)
    if name == "mlp" and norm == "instance":  # one value per channel: nothing to normalise over
        with pytest.raises(InitlabError, match="norm=instance has nothing to normalise in model=mlp"):
            build_model(name, {}, shape, 10, norm=norm)
        return
    torch.manual_seed(0)
    model = build_model(name, {}, shape, 10, norm=norm)
    norms = [m for m in model.modules() if isinstance(m, NORMS)]
    if norm == "none":
        assert not norms
    else:
        assert norms and all(isinstance(m, EXPECTED[norm]) for m in norms), {type(m).__name__ for m in norms}
    assert all(math.isfinite(v) for v in _train_steps(model, shape))


@pytest.mark.parametrize("norm", ["layer", "rms", "none"])
@pytest.mark.parametrize("position", ["pre", "post"])
def test_the_vit_trains_with_pre_and_post_norm(norm: str, position: str) -> None:
    torch.manual_seed(0)
    model = build_model("vit", {"depth": 2, "norm_position": position}, (1, 28, 28), 10, norm=norm)
    n_norms = sum(isinstance(m, NORMS) for m in model.modules())
    assert n_norms == {"none": 0}.get(norm, 2 * 2 + (position == "pre"))  # two per block, a final one for pre
    assert all(math.isfinite(v) for v in _train_steps(model, (1, 28, 28)))


def test_the_vit_defaults_to_layer_norm_and_refuses_batch_norm() -> None:
    model = build_model("vit", {}, (3, 32, 32), 10)
    assert sum(isinstance(m, LayerNorm) for m in model.modules()) == 2 * 6 + 1
    with pytest.raises(InitlabError, match="norm=batch does not apply to tokens"):
        build_model("vit", {}, (3, 32, 32), 10, bn=True)


def _randomise_affine(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    return m


def test_initlabs_norm_layers_are_torchs() -> None:
    """The layers that expose their statistics compute what torch's own do, forward and backward."""
    torch.manual_seed(0)
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    flat = torch.randn(3, 7, 16, requires_grad=True)
    pairs = [
        (LayerNorm2d(8), lambda m: F.group_norm(x, 1, m.weight, m.bias, m.eps), x),
        (InstanceNorm2d(8), lambda m: nn.functional.instance_norm(x, weight=m.weight, bias=m.bias, eps=m.eps), x),
        (GroupNorm(4, 8), lambda m: F.group_norm(x, 4, m.weight, m.bias, m.eps), x),
        (LayerNorm(16), lambda m: F.layer_norm(flat, (16,), m.weight, m.bias, m.eps), flat),
    ]
    if hasattr(F, "rms_norm"):  # torch >= 2.4: the reference for initlab's RMSNorm (its own does not need it)
        pairs += [
            (RMSNorm(16), lambda m: F.rms_norm(flat, (16,), m.weight, m.eps), flat),
            (RMSNorm(8, image=True),  # over C, H, W of each sample, gamma per channel
             lambda m: F.rms_norm(x, (8, 5, 5), None, m.eps) * m.weight.view(-1, 1, 1), x),
        ]
    for layer, reference, inp in pairs:
        _randomise_affine(layer)
        got, want = layer(inp), reference(layer)
        assert torch.allclose(got, want, atol=1e-5), type(layer).__name__
        g_got = torch.autograd.grad(got.square().sum(), inp)[0]
        g_want = torch.autograd.grad(want.square().sum(), inp)[0]
        assert torch.allclose(g_got, g_want, atol=1e-4), type(layer).__name__


def _recorded(model: nn.Module, x: torch.Tensor, queued: bool = False) -> dict[tuple[str, str], dict[str, float]]:
    tel = Telemetry(model, TelemetryConfig(hist=None), queued=queued)
    with tel.record():
        F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long)).backward()
    cols, _ = tel.collect(0)
    return {(cols["layer"][i], cols["kind"][i]): {k: float(cols[k][i]) for k in ("mean", "std", "min", "max", "numel")}
            for i in range(len(cols["layer"])) if cols["kind"][i].startswith("norm_")}


def test_group_norms_recorded_statistics_equal_a_direct_computation() -> None:
    """norm_mean / norm_var: the per-(sample, group) mean and variance GroupNorm normalised
    with, summarised; computed here again from its input, group by group."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), GroupNorm(4, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 5))
    x = torch.randn(6, 3, 8, 8) * 3 + 1
    rows = _recorded(model, x)
    h = model[0](x).detach().double().reshape(6, 4, -1)  # (sample, group, channels x positions)
    var, mean = torch.var_mean(h, dim=2, correction=0)
    for kind, values in (("norm_mean", mean), ("norm_var", var)):
        r = rows[("1", kind)]
        assert r["numel"] == 6 * 4
        assert r["mean"] == pytest.approx(values.mean().item(), rel=1e-4, abs=1e-6)
        assert r["std"] == pytest.approx(values.std().item(), rel=1e-3)
        assert r["min"] == pytest.approx(values.min().item(), rel=1e-4, abs=1e-6)
        assert r["max"] == pytest.approx(values.max().item(), rel=1e-4)


def test_the_queued_path_cuda_takes_records_the_same_norm_rows() -> None:
    """On CUDA/MPS every row is a queued tensor-op reduction: forced here on the CPU."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), GroupNorm(4, 8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 8),
                          RMSNorm(8), nn.Linear(8, 5))
    x = torch.randn(6, 3, 8, 8)
    cpu, queued = _recorded(model, x), _recorded(model, x, queued=True)
    assert cpu.keys() == queued.keys() == {("1", "norm_mean"), ("1", "norm_var"), ("5", "norm_var")}
    for key in cpu:
        for stat, value in cpu[key].items():
            assert queued[key][stat] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, stat)


def test_layer_and_rms_norms_statistics_are_per_token() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), LayerNorm(16), RMSNorm(16), nn.Flatten(), nn.Linear(16 * 5, 3))
    x = torch.randn(2, 5, 4)
    rows = _recorded(model, x)
    h = model[0](x).detach().double()
    assert rows[("1", "norm_mean")]["numel"] == 2 * 5
    assert rows[("1", "norm_var")]["max"] == pytest.approx(h.var(-1, correction=0).max().item(), rel=1e-4)
    assert ("2", "norm_mean") not in rows  # RMSNorm subtracts no mean
    ms = model[1](model[0](x)).detach().double().pow(2).mean(-1)
    assert rows[("2", "norm_var")]["mean"] == pytest.approx(ms.mean().item(), rel=1e-4)


def test_the_vit_records_every_block_its_attention_mlp_and_residual_stream(run) -> None:
    for position in ("pre", "post"):
        summary, run_dir = run("model=vit", "model.depth=3", f"model.norm_position={position}", "train.steps=2",
                               "train.batch_size=8", "data.train_size=32", "data.val_size=8", "plots=false")
        assert summary["status"] == "ok"
        step0 = initlab.load_run(run_dir).stats.query("step == 0")
        layers = set(step0.query("kind == 'act'")["layer"])
        for i in range(3):
            assert {f"blocks.{i}.attn.proj", f"blocks.{i}.mlp.fc2", f"blocks.{i}.out",
                    f"blocks.{i}.norm1", f"blocks.{i}.norm2"} <= layers
        assert (step0.query("kind == 'grad'")["layer"].str.endswith(".out")).sum() == 3
        assert ("norm" in layers) == (position == "pre")  # the final norm of pre-LN
        assert {"norm_mean", "norm_var"} <= set(step0["kind"])


def test_warm_up_and_cosine_follow_their_formula(run) -> None:
    assert [lr_factor(s, 4, "constant", 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(4, 4, "cosine", 10) == 1.0
    assert lr_factor(7, 4, "cosine", 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 3 / 6)))
    summary, run_dir = run("optim.warmup_steps=5", "optim.schedule=cosine", "train.steps=20", "optim.lr=0.1",
                           "plots=false")
    lr = initlab.load_run(run_dir).metrics["lr"].to_numpy()
    want = [0.1 * lr_factor(s, 5, "cosine", 20) for s in range(20)]
    assert np.allclose(lr, want, rtol=1e-12)
    assert lr[0] == pytest.approx(0.02) and lr[4] == pytest.approx(0.1) and lr[-1] < 0.002


def test_norm_group_on_the_command_line_with_bn_as_its_short_form(run) -> None:
    summary, run_dir = run("bn=true", "train.steps=1", "plots=false")
    types = set(initlab.load_run(run_dir).stats["module_type"])
    assert "BatchNorm2d" in types
    summary, run_dir = run("norm=group", "norm.groups=2", "norm.eps=1e-3", "train.steps=1", "train.batch_size=8")
    stats = initlab.load_run(run_dir).stats
    assert "GroupNorm" in set(stats["module_type"]) and "BatchNorm2d" not in set(stats["module_type"])
    assert stats.query("kind == 'norm_mean' and layer == 'features.1'")["numel"].iloc[0] == 8 * 2  # batch x groups


@pytest.mark.parametrize("norm", ["layer", "rms", "group", "batch"])
def test_the_theory_re_anchors_at_every_norm(run, norm: str) -> None:
    """A plain net with any norm is predicted layer by layer: at each norm the scale restarts
    at its gamma/beta (RMSNorm: its mean square at gamma^2)."""
    summary, run_dir = run("model=mlp", "model.depth=6", f"norm={norm}", "train.steps=0", "data.shape=[256]",
                           "train.batch_size=64")
    s = initlab.load_run(run_dir).stats.query("step == 0 and kind in ['act', 'grad']").dropna(subset=["theory_std"])
    act, grad = s[s.kind == "act"], s[s.kind == "grad"]
    assert len(act) == 19  # every module of the chain, the norms included
    assert np.allclose(act["theory_std"], act["std"], rtol=0.07)  # one draw: measured 2.8-5.0% at most
    assert np.allclose(grad["theory_std"], grad["std"], rtol=0.15)  # measured 3.8-11.7% at most
    if norm != "batch":
        assert len(grad) == 19
    else:  # BatchNorm's backward runs through its batch statistics (Yang et al. 2019: gradients grow going
        # back): no prediction below a BatchNorm, the measured gradient re-anchors the layers under it
        below_bn = grad[grad["module_type"] == "Linear"]
        assert len(grad) == 19 - 6 and below_bn["layer_idx"].tolist() == [grad["layer_idx"].max()]  # the head only
