"""initlab-report DIR --tensorboard: the run's numbers as TensorBoard reads them back, exactly."""

from pathlib import Path

import numpy as np
import pytest

from initlab.report.cli import main as report_main
from initlab.rundir.store import load_run

pytest.importorskip("tensorboard")  # the optional extra; .ci/run installs it with [dev]
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _read(logdir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_a_run_reads_back_from_tensorboards_own_event_reader(run, tmp_path: Path, capsys) -> None:
    _, run_dir = run("train.steps=12", "telemetry=full", "train.eval_every=6")
    assert report_main([str(run_dir), "--tensorboard", str(tmp_path / "tb"), "--html"]) == 0  # as SPEC.md writes it
    assert "view: tensorboard --logdir" in capsys.readouterr().out
    assert (run_dir / "report.html").exists()
    acc = _read(tmp_path / "tb")
    data = load_run(run_dir)
    # metrics, step by step (TensorBoard keeps float32)
    for col in ("loss", "accuracy", "lr", "val_loss"):
        m = data.metrics[["step", col]].dropna()
        got = [(e.step, e.value) for e in acc.Scalars(f"metrics/{col}")]
        assert [s for s, _ in got] == m["step"].tolist()
        assert np.array_equal(np.float32([v for _, v in got]), np.float32(m[col].to_numpy()))
    # per-layer statistics
    act = data.stats[(data.stats.kind == "act") & (data.stats.layer == "features.0")].sort_values("step")
    got = acc.Scalars("features.0/act/std")
    assert np.array_equal(np.float32([e.value for e in got]), np.float32(act["std"].to_numpy()))
    assert "features.1/act/dead_frac" in acc.Tags()["scalars"] and "features.0/update/ratio" in acc.Tags()["scalars"]
    # histograms: the stored counts, bin for bin, on the run's own edges
    h = data.hist[(data.hist.layer == "features.2") & (data.hist.kind == "grad")]
    events = acc.Histograms("features.2/grad")
    assert [e.step for e in events] == sorted(h["step"].unique())
    for e in events:
        rows = h[h.step == e.step].sort_values("bin")
        value = e.histogram_value
        first = int(rows["bin"].min())
        counts = np.asarray(value.bucket)
        assert np.array_equal(counts[rows["bin"].to_numpy() - first], rows["count"].to_numpy())
        assert counts.sum() == rows["count"].sum() == value.num  # the empty bins between stay empty
        finite = np.isfinite(rows["hi"].to_numpy())
        limits = np.asarray(value.bucket_limit)[rows["bin"].to_numpy() - first]
        assert np.allclose(limits[finite], rows["hi"].to_numpy()[finite])  # the fixed edges, not re-binned


def test_a_sweep_is_one_tensorboard_run_per_job_named_by_its_overrides(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    proc = run_cli(["-m", "bn=false,true", "train.steps=3", "train.batch_size=16", "data.train_size=64",
                    "data.val_size=16", "train.progress=false", "plots=false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = next(tmp_path.glob("outputs/multirun/*/*"))
    assert report_main([str(sweep), "--tensorboard"]) == 0
    runs = sorted(p.name for p in (sweep / "tensorboard").iterdir())
    assert runs == ["bn=False", "bn=True"]
    assert "metrics/loss" in _read(sweep / "tensorboard" / "bn=True").Tags()["scalars"]


def test_nothing_to_export_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty"), "--tensorboard"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("initlab-report: error:") and "\n" not in err


def test_without_the_extra_the_export_says_how_to_get_it(run, monkeypatch, capsys) -> None:
    import sys

    _, run_dir = run()
    capsys.readouterr()  # the run's own output
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    assert report_main([str(run_dir), "--tensorboard"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("initlab-report: error: TensorBoard export needs the tensorboard package: "
                   "pip install 'initlab[tensorboard]'")


def test_a_run_with_non_finite_values_exports_and_renders(run, tmp_path: Path) -> None:
    """Non-finite values are a result: the diverged run exports (NaN/inf scalars as such) and
    its page and figures are written."""
    from initlab.report.html import write_html

    summary, run_dir = run("model=mlp", "data.shape=[64]", "init=normal", "init.std=3.0", "optim.lr=1e6",
                           "train.steps=30", "telemetry=full", "plots=true")
    assert summary["status"] == "diverged"
    assert report_main([str(run_dir), "--tensorboard", str(tmp_path / "tb")]) == 0
    acc = _read(tmp_path / "tb")
    stats = load_run(run_dir).stats
    bad = stats[stats.kind.isin(["act", "grad"]) & ~np.isfinite(stats["std"])]
    metrics = load_run(run_dir).metrics
    if len(bad):  # the statistics that went non-finite are written as such, not dropped or clipped
        row = bad.iloc[0]
        got = {e.step: e.value for e in acc.Scalars(f"{row.layer}/{row.kind}/std")}
        assert not np.isfinite(got[int(row.step)])
    else:  # the loss went first
        last = metrics.dropna(subset=["loss"]).iloc[-1]
        assert not np.isfinite(last["loss"])
        got = {e.step: e.value for e in acc.Scalars("metrics/loss")}
        assert not np.isfinite(got[int(last["step"])])
    assert acc.Tags()["histograms"]
    page = write_html(run_dir).read_text()
    assert 'class="status diverged"' in page and "non-finite" in page
