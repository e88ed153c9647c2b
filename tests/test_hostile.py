"""A run or sweep directory someone else made: nothing in it runs in a browser, nothing is
written through a link it holds or outside it, and any string it holds is drawn literally."""

import base64
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import initlab
from initlab.report.cli import main as report_main
from initlab.rundir.safe import inside, write_text
from tests.conftest import compose_cfg


def _run(tmp_path: Path, name: str = "run") -> Path:
    from initlab.app.study import run_study

    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    run_study(compose_cfg(["train.steps=2", "train.batch_size=8", "data.val_size=16", "train.progress=false",
                           "plots=false", "device=cpu"]), run_dir)
    return run_dir


def test_file_names_and_svg_scripts_do_not_run_in_report_html(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    plots = run_dir / "plots"
    plots.mkdir()
    evil = "<img src=z onerror=alert(1)>"
    (plots / f"{evil}.pdf").write_bytes(b"%PDF-1.4")
    svg = '<svg xmlns="http://www.w3.org/2000/svg"><script>alert(2)</script><rect width="4" height="4"/></svg>'
    (plots / "figure.svg").write_text(svg)
    assert report_main([str(run_dir), "--html"]) == 0
    page = (run_dir / "report.html").read_text()
    assert evil not in page and "&lt;img src=z onerror=alert(1)&gt;.pdf" in page
    assert "alert(2)" not in page  # the SVG travels as an image's base64, never as markup
    assert base64.b64encode(svg.encode()).decode() in page


def test_links_in_the_directory_are_replaced_not_written_through(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    targets = {name: outside / name for name in ("figure.png", "page")}
    for t in targets.values():
        t.write_text("keep me")
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "step0_std.png").symlink_to(targets["figure.png"])
    (run_dir / "report.html").symlink_to(targets["page"])
    assert report_main([str(run_dir), "--html"]) == 0
    assert all(t.read_text() == "keep me" for t in targets.values())
    for name in ("plots/step0_std.png", "report.html"):
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0, name


def test_a_plots_folder_that_is_a_link_is_replaced(tmp_path: Path) -> None:
    run_dir = _run(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run_dir / "plots").symlink_to(elsewhere, target_is_directory=True)
    assert report_main([str(run_dir)]) == 0
    assert not any(elsewhere.iterdir()) and (run_dir / "plots").is_dir() and not (run_dir / "plots").is_symlink()


def test_a_sweep_table_cannot_send_the_report_outside_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    job = _run(sweep, "0")
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    victim = _run(tmp_path, "victim")
    (victim / "summary.json").write_text((job / "summary.json").read_text())
    table = pd.DataFrame({"job": ["0", "x"], "path": ["0", "../victim"], "status": ["ok", "ok"]})
    table.to_parquet(sweep / "sweep.parquet")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    from initlab.report.html import write_html

    write_html(sweep)
    assert (sweep / "0" / "report.html").exists() and not (victim / "report.html").exists()
    assert inside(sweep, "../victim") is None and inside(sweep, "0") == (sweep / "0").resolve()


def test_write_text_replaces_a_link_at_its_name(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep me")
    (tmp_path / "name").symlink_to(target)
    write_text(tmp_path / "name", "new")
    assert target.read_text() == "keep me" and (tmp_path / "name").read_text() == "new"
    assert not (tmp_path / "name").is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["name", "target"]


def test_a_dollar_in_a_layer_name_is_drawn_literally(tmp_path: Path) -> None:
    model = nn.Sequential()
    model.add_module("cost$", nn.Linear(4, 8))
    model.add_module("a$b", nn.ReLU())
    model.add_module("out", nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with initlab.watch(model, opt, out=tmp_path / "run", plots=True) as w:
        for step in range(3):
            with w.step(step):
                loss = nn.functional.cross_entropy(model(torch.randn(8, 4)), torch.randint(0, 3, (8,)))
                opt.zero_grad()
                loss.backward()
                opt.step()
            w.log(loss=loss)
    assert (tmp_path / "run" / "plots" / "step0_std.png").exists()
    assert initlab.load_run(tmp_path / "run").summary["status"] == "ok"
