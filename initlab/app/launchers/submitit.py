"""`hydra/launcher=submitit_local|submitit_slurm` (hydra_plugins.initlab_launchers): the
submitit plugin's launch, where a job whose process died is that job's `failed` (see
initlab.app.launchers) instead of the exception, raised when its result is read, that ends
the sweep before its report."""

from collections.abc import Callable, Sequence
from typing import Any

import submitit
from hydra.core.utils import JobReturn, filter_overrides
from omegaconf import open_dict

from initlab.app.launchers import dead_job, job_dir


class _Outcome:
    """Stands in for a submitit Job where the plugin reads `results()`."""

    def __init__(self, launcher: Any, job: Any, overrides: list[str], num: int) -> None:
        self.launcher, self.job, self.overrides, self.num = launcher, job, overrides, num

    def results(self) -> list[JobReturn]:
        try:
            return self.job.results()
        except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedJobError) as exc:
            how = f"submitit job {self.job.job_id} left no result: {type(exc).__name__}"
            sweep_config = self.launcher.hydra_context.config_loader.load_sweep_config(
                self.launcher.config, list(self.overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.num = self.num
            return [dead_job(self.num, filter_overrides(self.overrides), job_dir(sweep_config), how)]


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
           plugin_launch: Callable[[Sequence[Sequence[str]], int], Sequence[JobReturn]]) -> Sequence[JobReturn]:
    """The plugin's `launch`. It reads every job's result in one expression, so the executor's
    `map_array` is wrapped while it runs, to hand back jobs whose death is caught."""
    real = submitit.AutoExecutor.map_array

    def map_array(executor: Any, fn: Any, overrides: Sequence[list[str]], key: Any, nums: Sequence[int],
                  *rest: Any) -> list[_Outcome]:
        jobs = real(executor, fn, overrides, key, nums, *rest)
        return [_Outcome(launcher, j, list(o), n) for j, o, n in zip(jobs, overrides, nums)]

    submitit.AutoExecutor.map_array = map_array
    try:
        return plugin_launch(job_overrides, initial_job_idx)
    finally:
        submitit.AutoExecutor.map_array = real
