"""hydra/launcher=submitit_local|submitit_slurm -> LocalLauncher|SlurmLauncher
(conf/hydra/launcher/submitit_*.yaml)."""

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin
except ImportError:  # the `slurm` extra is not installed
    _plugin = None

if _plugin is not None:

    class _DeathIsAVerdict:
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            from initlab.app.launchers.submitit import launch

            return launch(self, job_overrides, initial_job_idx, super().launch)  # type: ignore[misc]

    class LocalLauncher(_DeathIsAVerdict, _plugin.LocalLauncher):
        """submitit_local where a job that died is a failed job, not the end of the sweep."""

    class SlurmLauncher(_DeathIsAVerdict, _plugin.SlurmLauncher):
        """submitit_slurm where a job that died is a failed job, not the end of the sweep."""
