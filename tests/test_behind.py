"""A sequential sweep's figures drawn behind it (initlab/app/behind.py): the same files as drawn
in the run's own process, every one there when `initlab -m` returns, a failure logged and
never raised, and after Ctrl-C the runs not drawn are named."""

import logging
import shutil
from pathlib import Path

import pytest

from initlab.app.behind import Behind, workers
from initlab.report.build import report_run
from tests.conftest import run_cli


@pytest.fixture
def undrawn(run, tmp_path: Path):
    """n copies of one recorded step-0 run, none of them drawn yet."""
    _, run_dir = run("plots=false", "train.steps=0")

    def copies(n: int) -> list[Path]:
        out = [tmp_path / "copies" / str(i) for i in range(n)]
        for d in out:
            shutil.copytree(run_dir, d)
        return out

    return copies


def test_figures_drawn_behind_are_the_files_drawn_in_process(undrawn) -> None:
    behind_dir, here_dir = undrawn(2)
    behind = Behind()
    behind.submit(behind_dir, html=True)
    behind.finish()
    made = report_run(here_dir)
    assert made and all((behind_dir / p.relative_to(here_dir)).read_bytes() == p.read_bytes() for p in made)
    assert "data:image/png;base64," in (behind_dir / "report.html").read_text()  # the page after its figures


def test_a_failure_behind_is_logged_with_the_rebuild_command(tmp_path: Path, caplog) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    behind = Behind()
    with caplog.at_level(logging.ERROR, logger="initlab"):
        behind.submit(empty, html=False)
        behind.finish()  # returns: the worker's exception is the run's log line, not the sweep's end
    assert f"plots   failed for {empty}" in caplog.text and f"`initlab-report {empty}`" in caplog.text
    assert "NothingToDraw" in caplog.text


def test_abandon_finishes_what_is_being_drawn_and_names_the_rest(undrawn) -> None:
    runs = undrawn(8)
    behind = Behind()
    for d in runs:
        behind.submit(d, html=False)
    left = behind.abandon()
    # at most one run per worker and one queued beside them had started: those are finished
    assert len(left) >= len(runs) - workers() - 1
    assert set(left) <= set(runs)
    for d in runs:
        assert (d / "plots" / "step0_std.png").exists() == (d not in left), d


def test_a_sequential_sweep_has_every_figure_and_page_when_it_returns(tmp_path: Path) -> None:
    proc = run_cli(["-m", "seed=0,1,2", "train.steps=0", "train.batch_size=16", "data.train_size=64",
                    "data.val_size=16", "train.progress=false", "report.html=true", "hydra.sweep.dir=sw"],
                   cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for job in ("0", "1", "2"):
        plots = {p.name for p in (tmp_path / "sw" / job / "plots").iterdir()}
        assert {"step0_std.png", "grad_flow.png"} <= plots, (job, plots)
        page = (tmp_path / "sw" / job / "report.html").read_text()
        assert page.count("data:image/png;base64,") == len(plots)  # written after its figures
    assert (tmp_path / "sw" / "report.html").exists() and (tmp_path / "sw" / "plots").is_dir()
