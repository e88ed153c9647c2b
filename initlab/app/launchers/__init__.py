"""Sweep launchers where one job's death is that job's verdict, not the sweep's.

`hydra/launcher=joblib` and `hydra/launcher=submitit_local|submitit_slurm` resolve to the
thin plugin classes in hydra_plugins/initlab_launchers, whose `launch` is in this package
(conf/hydra/launcher/ shadows the plugins' configs; each plugin stays an optional extra). Under the stock plugins a job killed by SIGKILL or the OOM killer ends the
whole sweep: loky kills every sibling with it, submitit raises when its result is read, and
no report is written. Here the dead job gets a `failed` summary.json naming how it died,
the other jobs run on and the sweep report is built as usual.
"""

import json
import logging
import signal
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus

log = logging.getLogger("initlab")


def make_discoverable() -> None:
    """Hydra finds plugins by listing the folders of the `hydra_plugins` namespace. An editable
    install serves ours through an import hook, which cannot be listed: add its folder."""
    import hydra_plugins
    import hydra_plugins.initlab_launchers as ours

    folder = str(Path(ours.__file__).parent.parent)
    if folder not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(folder)


FINAL = ("ok", "diverged", "failed", "interrupted")  # a summary with one of these is the job's own verdict


def how_it_died(exitcode: int | None) -> str:
    """'SIGKILL' for an exit code of -9, 'exit code 3' for a plain non-zero exit."""
    if exitcode is None or exitcode >= 0:
        return f"exit code {exitcode}"
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def job_dir(sweep_config: Any) -> Path:
    """Where a job of the sweep writes (its config has hydra.job.num set)."""
    return Path(str(sweep_config.hydra.sweep.dir)) / str(sweep_config.hydra.sweep.subdir)


def record_death(run_dir: Path | None, how: str) -> None:
    """A job whose process ended without its own verdict: summary.json says `failed` and how it
    died; every part it flushed stays (initlab-report draws them)."""
    from initlab.rundir.layout import RunLayout
    from initlab.rundir.store import read_metrics, write_json  # pandas: only now

    if run_dir is None or not run_dir.is_dir():
        return
    summary = RunLayout(run_dir).summary
    try:
        if json.loads(summary.read_text()).get("status") in FINAL:
            return  # it wrote its verdict before dying (e.g. while drawing)
    except (OSError, ValueError):
        pass
    try:
        steps = len(read_metrics(run_dir))
    except Exception:  # a part torn by the death: the count is unknown, the verdict is not
        steps = None
    write_json(summary, {
        "status": "failed",
        "error": f"the job's process died ({how}: killed, or out of memory?) before writing its summary",
        "steps_done": steps,
        "note": "parts flushed before the death are kept; `initlab-report` draws them",
    })
    RunLayout(run_dir).lock.unlink(missing_ok=True)  # its owner is gone


def dead_job(num: int, overrides: list[str], run_dir: Path | None, how: str) -> JobReturn:
    """The verdict for a job that died: logged, written, and a completed return for the sweeper
    (a failed JobReturn would make Hydra's sweeper raise and skip the report)."""
    log.error("failed  job #%d (%s) died: %s", num, " ".join(overrides), how)
    record_death(run_dir, how)
    return JobReturn(overrides=overrides, status=JobStatus.COMPLETED, _return_value=None)
