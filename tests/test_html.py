"""report.html: one self-contained page per run or sweep, opened for real in headless Chromium."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from initlab.report.cli import main as report_main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _self_contained(text: str) -> None:
    """Nothing fetched from elsewhere: no src/href to http(s), no external scripts or styles."""
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
    assert "<link" not in text and not re.search(r"<script[^>]+src=", text)


def _dom(page: Path, tmp_path: Path) -> str:
    return _dom_url(page.as_uri(), tmp_path)


def _dom_url(url: str, tmp_path: Path) -> str:
    """The page as headless Chromium renders it from file://, with every network request
    refused (a page that needed the network would show broken figures)."""
    proc = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'chromium'}", "--host-resolver-rules=MAP * ~NOTFOUND",
         "--virtual-time-budget=5000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_a_run_report_holds_its_verdict_flags_and_figures(run, tmp_path: Path) -> None:
    summary, run_dir = run("plots=true", "report.html=true")
    page = run_dir / "report.html"
    text = page.read_text()
    _self_contained(text)
    assert f'class="status {summary["status"]}"' in text
    assert all(f["flag"] in text for f in summary["flags"])
    assert text.count("data:image/png;base64,") == len(list((run_dir / "plots").glob("*.png"))) > 0
    assert "features.0" in text and "act std" in text  # the per-layer step-0 table
    assert all(r["module"] in text for r in summary["init"])  # the init report
    assert '<a href="stats.parquet">' in text and '<a href="summary.json">' in text  # relative links


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (.ci/run installs it)")
def test_the_reports_open_from_file_in_a_real_browser(run, tmp_path: Path) -> None:
    from tests.conftest import run_cli

    _, run_dir = run("plots=true", "train.steps=3")
    assert report_main([str(run_dir), "--html"]) == 0
    dom = _dom(run_dir / "report.html", tmp_path)
    n = len(list((run_dir / "plots").glob("*.png")))
    assert f'data-figures="{n}"' in dom and 'data-figures-ok="yes"' in dom  # every figure decoded offline
    proc = run_cli(["-m", "bn=false,true", "train.steps=3", "train.batch_size=16", "data.train_size=64",
                    "data.val_size=16", "train.progress=false", "plots=false", "report.html=true"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sweep = next(tmp_path.glob("outputs/multirun/*/*"))
    text = (sweep / "report.html").read_text()
    _self_contained(text)
    dom = _dom(sweep / "report.html", tmp_path)
    assert 'data-figures-ok="yes"' in dom and "bn" in dom and dom.count("<tr>") >= 3  # the jobs' table
    assert '<a href="0/report.html">' in dom and (sweep / "0" / "report.html").exists()  # each job's page
    def first_job(dom: str) -> str:
        return re.search(r'<table[^>]*class="dataframe jobs".*?<tbody>\s*<tr>\s*<td>(\d+)</td>', dom, re.S).group(1)

    assert first_job(dom) == "0"
    page = sweep / "report.html"
    sorted_dom = _dom_url(page.as_uri() + "#sort=job:desc", tmp_path)  # the page's own sorting code
    assert 'data-sorted="job:desc"' in sorted_dom and first_job(sorted_dom) == "1"


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (.ci/run installs it)")
def test_hostile_names_and_svg_scripts_do_not_run_in_a_real_browser(run, tmp_path: Path) -> None:
    """A plots/ folder someone else filled: a PDF whose name is markup, an SVG with a script.
    Opened in headless Chromium, neither runs: the page's body never gets the attribute they set."""
    _, run_dir = run("train.steps=2")
    plots = run_dir / "plots"
    plots.mkdir()
    mark = "document.body.setAttribute('data-pwned','1')"
    (plots / f'<img src=z onerror="{mark}">.pdf').write_bytes(b"%PDF-1.4")
    (plots / "figure.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><script>{mark}</script>'
                                      '<rect width="4" height="4"/></svg>')
    assert report_main([str(run_dir), "--html"]) == 0
    dom = _dom(run_dir / "report.html", tmp_path)
    assert "data-pwned" not in dom.split("<body", 1)[1].split(">", 1)[0]
    assert 'data-figures-ok="yes"' in dom  # the SVG still shows, as an image
