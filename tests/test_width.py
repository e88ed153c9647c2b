"""Width: parametrisations against Tensor Programs V's table computed by hand, the coordinate
check's numbers against direct computation, its slope fit and verdict, the library route on a
model defined here, and the published shape (SP grows with width under Adam, μP stays flat)."""

import importlib
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import initlab
from initlab.errors import InitlabError
from initlab.width.coord import CoordResult, fit_slopes, verdicts
from initlab.width.roles import infer_roles


def mlp(width: int, n_in: int = 12, classes: int = 5) -> nn.Module:
    """Input Linear, one hidden Linear, readout: TP5's three roles."""
    return nn.Sequential(nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, classes))


def _by_name(groups: list[dict]) -> dict[str, dict]:
    return {name: g for g in groups for name in g["names"]}


def test_roles_are_read_from_the_shapes_that_grow() -> None:
    roles = {r.name: (r.role, r.fan_in_mult, r.fan_out_mult) for r in infer_roles(mlp(64), mlp(16))}
    assert roles == {"0.weight": ("input", 1.0, 4.0), "0.bias": ("vector", 1.0, 4.0),
                     "2.weight": ("hidden", 4.0, 4.0), "2.bias": ("vector", 1.0, 4.0),
                     "4.weight": ("output", 4.0, 1.0), "4.bias": ("fixed", 1.0, 1.0)}


@pytest.mark.parametrize("width", [64, 256])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_mup_matches_tp5s_table_by_hand(width: int, optimizer: str) -> None:
    """μP with base width 32: lr per role, Adam's ε, the readout's init and multiplier."""
    base_w, lr, eps = 32, 0.1, 1e-8
    m = width / base_w
    torch.manual_seed(0)
    model = mlp(width)
    torch.manual_seed(0)
    plain = mlp(width)  # the same draw, not parametrised
    groups = _by_name(initlab.parametrize(model, "mup", base=mlp(base_w), optimizer=optimizer, lr=lr, eps=eps))
    expected_lr = ({"0.weight": lr * m, "0.bias": lr * m, "2.weight": lr, "2.bias": lr * m, "4.weight": lr * m,
                    "4.bias": lr} if optimizer == "sgd" else
                   {"0.weight": lr, "0.bias": lr, "2.weight": lr / m, "2.bias": lr, "4.weight": lr, "4.bias": lr})
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(expected_lr)
    if optimizer == "adam":
        assert {n: g["eps"] for n, g in groups.items()} == pytest.approx(
            {"0.weight": eps, "0.bias": eps, "2.weight": eps / m, "2.bias": eps, "4.weight": eps / m, "4.bias": eps})
    # init: input and hidden as drawn (var 1/fan_in); readout weights and bias x sqrt(m), its input x 1/m
    assert torch.equal(model[0].weight, plain[0].weight) and torch.equal(model[2].weight, plain[2].weight)
    assert torch.allclose(model[4].weight, plain[4].weight * math.sqrt(m))
    x = torch.randn(7, 12)
    with torch.no_grad():
        h = plain[3](plain[2](plain[1](plain[0](x))))
        expected = F.linear(h / m, plain[4].weight * math.sqrt(m), plain[4].bias * math.sqrt(m))
        assert torch.allclose(model(x), expected, atol=1e-6)
    # the effective readout variance is 1/fan_in^2 up to the base's constant: (sqrt(m))^2 / m^2 / fan_in = 1/(m fan_in)
    assert float(model[4].weight.detach().var() / m**2) == pytest.approx(float(plain[4].weight.detach().var()) / m, rel=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_ntk_matches_the_table_by_hand(optimizer: str) -> None:
    lr, m = 0.1, 4.0
    groups = _by_name(initlab.parametrize(mlp(128), "ntk", base=mlp(32), optimizer=optimizer, lr=lr))
    k = 1 / m if optimizer == "sgd" else 1 / math.sqrt(m)
    assert {n: g["lr"] for n, g in groups.items()} == pytest.approx(
        {"0.weight": lr, "0.bias": lr, "2.weight": lr * k, "2.bias": lr, "4.weight": lr * k, "4.bias": lr})


def test_sp_groups_leave_every_learning_rate_and_weight_alone() -> None:
    torch.manual_seed(0)
    model = mlp(128)
    before = [p.clone() for p in model.parameters()]
    groups = initlab.parametrize(model, "sp", base=mlp(32), optimizer="adam", lr=0.01)
    assert {g["lr"] for g in groups} == {0.01} and all("eps" in g for g in groups)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_decoupled_weight_decay_keeps_lr_times_wd_at_every_width() -> None:
    for width in (64, 512):
        groups = initlab.parametrize(mlp(width), "mup", base=mlp(32), optimizer="adamw", lr=0.01, weight_decay=0.1)
        assert {round(g["lr"] * g["weight_decay"], 12) for g in groups} == {0.001}


def test_mup_scales_attention_logits_by_one_over_d() -> None:
    from initlab.models import build_model

    def vit(dim: int) -> nn.Module:
        return build_model("vit", {"dim": dim, "depth": 2, "heads": 2}, (1, 8, 8), 10)

    model = vit(128)
    initlab.parametrize(model, "mup", base=vit(32), optimizer="adam", lr=1e-3)
    attn = model.blocks[0].attn
    assert attn.logit_scale == pytest.approx(math.sqrt(16) / 64)  # sqrt(d0)/d: 1/sqrt(d) at the base
    assert vit(32).blocks[0].attn.logit_scale == pytest.approx(16 ** -0.5)  # SP's 1/sqrt(d_head)


def test_depth_multipliers_scale_each_residual_branch() -> None:
    from initlab.models import build_model

    def resnet(width: int) -> nn.Module:
        return build_model("resnet", {"width": width, "blocks": [2, 2]}, (3, 16, 16), 10)

    model = resnet(16)
    initlab.parametrize(model, "mup", base=resnet(8), optimizer="sgd", lr=0.1, depth="sqrt")
    assert [m.branch_mult for m in model.modules() if hasattr(m, "branch_mult")] == [0.5] * 4  # 1/sqrt(4 blocks)
    model = resnet(16)
    initlab.parametrize(model, "sp", base=resnet(8), optimizer="sgd", lr=0.1, depth="linear")
    assert [m.branch_mult for m in model.modules() if hasattr(m, "branch_mult")] == [0.25] * 4  # 1/4 blocks


def test_a_model_without_a_width_dimension_is_a_clear_error() -> None:
    with pytest.raises(InitlabError, match="no width dimension"):
        initlab.parametrize(mlp(32), "mup", base=mlp(32), optimizer="adam", lr=1e-3)
    with pytest.raises(InitlabError, match="number of dimensions"):
        initlab.parametrize(nn.Conv2d(3, 8, 3), "mup", base=nn.Linear(3, 4), optimizer="adam", lr=1e-3)
    with pytest.raises(InitlabError, match="no counterpart"):
        initlab.parametrize(mlp(64), "mup", base=nn.Sequential(nn.Linear(12, 32)), optimizer="adam", lr=1e-3)


def _batch(n_in: int = 12, classes: int = 5, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, n_in, generator=g), torch.randint(0, classes, (n,), generator=g)


def test_the_coordinate_table_is_the_direct_mean_abs_output() -> None:
    x, y = _batch()
    result = initlab.coord_check(mlp, widths=[16, 32], batches=(x, y), param="sp", steps=2, seeds=1, lr=0.01)
    torch.manual_seed(0)
    model = mlp(32)
    with torch.no_grad():
        outs = [x]
        for layer in model:
            outs.append(layer(outs[-1]))
    at0 = result.table[(result.table["width"] == 32) & (result.table["step"] == 0) & (result.table["kind"] == "act")]
    for i in range(5):
        row = at0[at0["layer"] == str(i)].iloc[0]
        assert row["l1"] == pytest.approx(float(outs[i + 1].abs().mean()), rel=1e-6)
        assert row["rms"] == pytest.approx(float(outs[i + 1].square().mean().sqrt()), rel=1e-6)
    assert set(result.table["kind"]) == {"act", "update", "weight"}
    assert (result.table[result.table["kind"] == "update"]["step"] >= 1).all()  # no update before the first step


def test_the_update_rows_are_delta_w_times_x() -> None:
    """`update` at step 1 is (W1 - W0) x1 (+ Δb) for the same input the layer sees then."""
    x, y = _batch()
    result = initlab.coord_check(mlp, widths=[16, 32], batches=(x, y), param="sp", optimizer="sgd", steps=2,
                                 seeds=1, lr=0.5)
    torch.manual_seed(0)
    model = mlp(16)
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        h1 = model[1](model[0](x))
        change = F.linear(h1, model[2].weight - w0[2], model[2].bias - w0[3])
    row = result.table.query("width == 16 and step == 1 and kind == 'update' and layer == '2'").iloc[0]
    assert row["l1"] == pytest.approx(float(change.abs().mean()), rel=1e-5)


def test_the_slope_fit_recovers_known_exponents() -> None:
    widths = np.array([64, 128, 256, 512])
    rows = []
    for seed, noise in enumerate((1.0, 1.03, 0.97)):
        for layer, exponent in (("a", 0.0), ("b", 0.5), ("c", -1.0)):
            for w in widths:
                rows.append(("sp", w, seed, 1, layer, {"a": 0, "b": 1, "c": 2}[layer], "Linear", "act",
                             noise * 3.0 * w ** exponent))
    table = pd.DataFrame(rows, columns=["param", "width", "seed", "step", "layer", "layer_idx", "module_type", "kind",
                                        "l1"])
    slopes = fit_slopes(table).set_index("layer")["slope"]
    assert slopes.to_dict() == pytest.approx({"a": 0.0, "b": 0.5, "c": -1.0}, abs=1e-9)
    v = verdicts(fit_slopes(table), 0.1)["sp"]
    assert v["verdict"] == "drifts" and [d["layer"] for d in v["drifting"]] == ["b", "c"]


def test_the_verdict_names_the_layer_built_to_drift() -> None:
    class Grow(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.width = width

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.width

    def make(width: int) -> nn.Module:
        return nn.Sequential(nn.Linear(12, width), nn.ReLU(), nn.Linear(width, width), Grow(width), nn.Linear(width, 5))

    result = initlab.coord_check(make, widths=[32, 64, 128], batches=_batch(), param="mup", steps=2, seeds=2, lr=1e-3)
    drifting = {d["layer"]: d for d in result.verdict["mup"]["drifting"]}
    assert "3" in drifting and drifting["3"]["slope"] == pytest.approx(1.0, abs=0.15)
    assert "0" not in drifting and "2" not in drifting  # the layers before it stay put


class ResidualCNN(nn.Module):
    """A small residual CNN defined here, as a user would: the library route on it."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1))
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = torch.relu(h + self.block(h))
        return self.head(h.mean(dim=(2, 3)))


def test_parametrize_and_coord_check_on_a_users_residual_cnn(tmp_path) -> None:
    roles = {r.name: r.role for r in infer_roles(ResidualCNN(32), ResidualCNN(8))}
    assert roles["stem.weight"] == "input" and roles["block.0.weight"] == "hidden" and roles["head.weight"] == "output"
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))]
    result = initlab.coord_check(ResidualCNN, widths=[8, 16, 32], batches=batches, param=["sp", "mup"], steps=3,
                                 seeds=2, lr=1e-2, optimizer="adam")
    assert isinstance(result, CoordResult) and set(result.verdict) == {"sp", "mup"}
    assert {"stem", "block.0", "block.2", "head"} <= set(result.table["layer"])
    path = result.plot(tmp_path / "coord")
    assert path.exists() and path.suffix == ".png"


def test_coord_check_refuses_what_it_cannot_do() -> None:
    with pytest.raises(InitlabError, match="two widths"):
        initlab.coord_check(mlp, widths=[32], batches=_batch())
    with pytest.raises(InitlabError, match="param"):
        initlab.coord_check(mlp, widths=[16, 32], batches=_batch(), param="mu")
    with pytest.raises(InitlabError, match="batches"):
        initlab.coord_check(mlp, widths=[16, 32], batches=42)


def test_the_published_shape_sp_grows_and_mup_stays_flat_under_adam() -> None:
    """TP5's Figure (mup's coord check): an MLP under Adam, widths 64..1024. Under SP the hidden
    and output layers' mean |output| grows with width from step 2 on; under μP every layer is flat
    within tolerance. Margins from the seeds: the SP slopes stay far above, the μP ones inside."""
    def make(width: int) -> nn.Module:
        return mlp(width, n_in=64, classes=10)

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g))
    result = initlab.coord_check(make, widths=[64, 128, 256, 512, 1024], batches=batch, param=["sp", "mup"],
                                 optimizer="adam", lr=0.01, steps=4, seeds=3)
    s = result.slopes[(result.slopes["kind"] == "act") & (result.slopes["step"] >= 2)]
    sp, mup = s[s["param"] == "sp"].set_index(["layer", "step"]), s[s["param"] == "mup"]
    for layer in ("2", "4"):  # the hidden Linear and the readout
        grown = sp.loc[layer]
        assert (grown["slope"] - 3 * grown["slope_sd"].fillna(0) > 0.3).all(), grown
    assert result.verdict["sp"]["verdict"] == "drifts"
    assert result.verdict["mup"]["verdict"] == "flat", result.verdict["mup"]
    assert (mup["slope"].abs() + 2 * mup["slope_sd"].fillna(0) < 0.15).all()


def test_the_check_catches_weight_decay_left_unscaled(monkeypatch: pytest.MonkeyPatch) -> None:
    """μP with AdamW: decoupled weight decay must keep lr·wd the same at every width. Left at its
    base value on the groups whose learning rate shrinks (a MuAdam written without it), the hidden
    weights decay less the wider the model, and the coordinate check says so where the right
    scaling stays flat: the check cannot pass while the decay is wrong."""
    scheme = importlib.import_module("initlab.width.parametrize")  # the module (the package exports the function)

    def make(width: int) -> nn.Module:
        return mlp(width, n_in=64, classes=10)

    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(64, 64, generator=g), torch.randint(0, 10, (64,), generator=g))
    kwargs = {"widths": [64, 128, 256, 512, 1024], "batches": batch, "param": "mup", "optimizer": "adamw",
              "lr": 0.01, "weight_decay": 10.0, "steps": 8, "seeds": 2}
    right = initlab.coord_check(make, **kwargs)
    scaled = scheme._groups

    def unscaled(*args: object, **kw: object) -> list[dict]:
        groups = scaled(*args, **kw)
        for group in groups:
            group["weight_decay"] = kwargs["weight_decay"]
        return groups

    monkeypatch.setattr(scheme, "_groups", unscaled)
    wrong = initlab.coord_check(make, **kwargs)
    assert right.verdict["mup"]["verdict"] == "flat", right.verdict["mup"]
    assert wrong.verdict["mup"]["verdict"] == "drifts"
    assert {"2", "3", "4"} & {d["layer"] for d in wrong.verdict["mup"]["drifting"]}  # from the hidden layer on
