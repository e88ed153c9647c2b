"""hydra/launcher=joblib -> JoblibLauncher (conf/hydra/launcher/joblib.yaml)."""

from collections.abc import Sequence
from typing import Any

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Plugin
except ImportError:  # the `parallel` extra is not installed
    _Plugin = None

if _Plugin is not None:

    class JoblibLauncher(_Plugin):
        """The joblib plugin's launcher with each job in a process of its own: a job that dies is
        that job's `failed`, and Ctrl-C stops the sweep cleanly (initlab.app.launchers.joblib)."""

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
            from initlab.app.launchers.joblib import launch

            return launch(self, job_overrides, initial_job_idx)
