"""precision=bf16|fp16: autocast, loss scaling through GradScaler (its skipped steps and scale
recorded), the run's own format measured, the underflow flag, and the formats figure."""

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

import initlab
from initlab.diagnose import diagnose
from initlab.errors import ConfigError
from initlab.precision import precision_of
from initlab.report.plots.formats import LIMITS
from initlab.rundir.store import RunData
from initlab.telemetry.formats import DTYPES
from tests.conftest import run_cli

SMALL = ["model=mlp", "model.depth=3", "model.width=32", "data.shape=[64]", "data.train_size=256",
         "data.val_size=64", "train.batch_size=32", "train.progress=false", "device=cpu"]
needs_cpu_scaler = pytest.mark.skipif(not hasattr(torch.amp, "GradScaler"),
                                      reason="loss scaling on the CPU needs torch >= 2.3 (torch.amp.GradScaler)")


def _run(tmp_path: Path, *args: str) -> RunData:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = run_cli([*SMALL, *args, "hydra.run.dir=r"], tmp_path)
    assert out.returncode == 0, out.stderr[-1500:]
    return initlab.load_run(tmp_path / "r")


@needs_cpu_scaler
def test_dynamic_scaling_skips_a_step_with_inf_gradients_and_halves_the_scale(tmp_path: Path) -> None:
    run = _run(tmp_path, "precision=fp16", "precision.init_scale=268435456", "train.steps=20", "plots=false")
    m = run.metrics.set_index("step")
    skipped = m.index[m["skipped"] == 1].tolist()
    assert skipped[:3] == [0, 1, 2]  # from the start, until the scale fits
    for s in skipped:
        if s + 1 in m.index:
            assert m.loc[s + 1, "loss_scale"] == m.loc[s, "loss_scale"] / 2  # halved after each
    kept = [s for s in m.index if s not in skipped and s + 1 in m.index]
    assert kept and all(m.loc[s + 1, "loss_scale"] == m.loc[s, "loss_scale"] for s in kept)  # held otherwise
    assert run.summary["precision"] == {"name": "fp16", "loss_scale": "dynamic", "final_scale":
                                        m["loss_scale"].iloc[-1], "skipped_steps": len(skipped)}
    assert run.summary["status"] == "ok"  # the scaler's infs are not a divergence
    w = run.stats[(run.stats["kind"] == "weight") & (run.stats["param"] == "weight")]
    first = w[w["layer"] == w["layer"].iloc[0]].set_index("step")["mean"]
    assert first.loc[0] == first.loc[2]  # a skipped step moves no weight


@needs_cpu_scaler
def test_a_static_scale_holds(tmp_path: Path) -> None:
    run = _run(tmp_path, "precision=fp16", "precision.loss_scale=1024", "train.steps=5", "plots=false")
    assert run.metrics["loss_scale"].tolist() == [1024.0] * 5
    assert run.summary["precision"]["loss_scale"] == "static"


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_the_recorded_activations_are_the_autocast_outputs(tmp_path: Path, name: str) -> None:
    run = _run(tmp_path, f"precision={name}", "precision.loss_scale=none", "train.steps=2", "plots=false")
    acts = run.stats[(run.stats["kind"] == "act") & (run.stats["module_type"] == "Linear")]
    assert len(acts) and f"{name}_zero" in run.stats  # the run's own format is always measured
    dtype = DTYPES[name]
    for v in [*acts["amax"], *acts["amin"]]:  # what the low format holds, exactly
        assert float(torch.tensor(v).to(dtype).float()) == v
    fp32 = _run(tmp_path / "fp32", "train.steps=2", "plots=false", "telemetry.formats=[bf16]")
    a32 = fp32.stats[(fp32.stats["kind"] == "act") & (fp32.stats["module_type"] == "Linear")]
    assert any(float(torch.tensor(v).to(torch.bfloat16).float()) != v for v in a32["amax"])


def test_the_underflow_flag_fires_on_a_net_built_to_underflow_and_not_otherwise(tmp_path: Path) -> None:
    deep = _run(tmp_path, "model.depth=30", "model.width=64", "train.steps=3", "plots=false", "telemetry.formats=[fp16]")
    flags = {f["flag"]: f for f in deep.summary["flags"]}
    assert "grad_underflow" in flags and flags["grad_underflow"]["format"] == "fp16"
    assert flags["grad_underflow"]["layers"][0] == "layers.0"  # the first layer, furthest from the loss
    shallow = _run(tmp_path / "shallow", "train.steps=3", "plots=false", "telemetry.formats=[fp16]")
    assert "grad_underflow" not in {f["flag"] for f in shallow.summary["flags"]}
    table = deep.stats.assign(fp16_zero=0.0)  # the same run with nothing flushed: no flag
    assert "grad_underflow" not in {f["flag"] for f in diagnose(table, deep.summary)}


def test_the_formats_figure_is_drawn_when_formats_were_recorded(tmp_path: Path) -> None:
    run = _run(tmp_path, "model.depth=8", "train.steps=3", "telemetry.formats=[fp16,e4m3]")
    assert (run.path / "plots" / "formats.png").stat().st_size > 10_000
    plain = _run(tmp_path / "plain", "train.steps=3")
    assert not (plain.path / "plots" / "formats.png").exists()


def test_bad_precision_settings_are_one_line(tmp_path: Path) -> None:
    for args, message in ((["precision=fp8"], "precision=fp8 is not one of the precision options"),
                          (["precision=fp16", "precision.loss_scale=sometimes"], "precision.loss_scale='sometimes' is invalid"),
                          (["telemetry.formats=[fp12]"], "telemetry.formats=['fp12'] is invalid")):
        out = run_cli([*SMALL, *args, "train.steps=1", "plots=false"], tmp_path)
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("initlab: error:")]
        assert out.returncode == 2 and len(errors) == 1 and message in errors[0], out.stderr[-600:]
    with pytest.raises(ConfigError, match="expected none, dynamic or a number > 0"):
        precision_of({"name": "fp16", "loss_scale": -1.0}, torch.device("cpu"))


def test_the_figures_limits_are_torchs() -> None:
    for name, (sub, tiny, top) in LIMITS.items():
        fi = torch.finfo(DTYPES[name])
        assert (sub, tiny, top) == (fi.tiny * fi.eps, fi.tiny, fi.max), name


def test_a_fp32_run_says_nothing_of_precision_in_its_metrics(tmp_path: Path) -> None:
    run = _run(tmp_path, "train.steps=2", "plots=false")
    assert "loss_scale" not in run.metrics and run.summary["precision"]["name"] == "fp32"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["precision"]["skipped_steps"] == 0
    assert isinstance(run.stats, pd.DataFrame) and "fp16_zero" not in run.stats
