"""The configs ship inside the package: `initlab` works from any directory after a
regular (non-editable) install too, not only from the source tree."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_regular_install_runs_from_another_directory(tmp_path: Path) -> None:
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "initlab" / "conf" / "config.yaml").exists()
    assert (target / "initlab" / "conf" / "model" / "conv4.yaml").exists()
    assert (target / "initlab" / "conf" / "hydra" / "job_logging" / "initlab.yaml").exists()
    packages = {p.parent.relative_to(ROOT) for p in (ROOT / "initlab").rglob("__init__.py")}
    missing = [str(p) for p in packages if not (target / p / "__init__.py").exists()]
    assert not missing, f"packages not shipped (pyproject's packages list): {missing}"
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run(
        [sys.executable, "-c", "import initlab; print(initlab.__file__)"],
        cwd=work, env=env, capture_output=True, text=True,
    )
    assert probe.stdout.strip().startswith(str(target)), probe.stdout + probe.stderr
    run = subprocess.run(
        [sys.executable, "-m", "initlab", "experiment=smoke", "train.progress=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert list((work / "outputs").rglob("summary.json"))
    assert list((work / "outputs").rglob("plots/step0_std.png")), run.stderr  # a plotting failure is only logged
