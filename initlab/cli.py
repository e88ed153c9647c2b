"""The `initlab` command: Hydra's entry point, signals and exit codes; the run itself is
`initlab.study.run_study`."""

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from initlab.errors import InitlabError, Interrupted
from initlab.store import RunDirTaken, write_json
from initlab.study import run_study, versions
from initlab.sweep import LAST_SWEEP

log = logging.getLogger("initlab")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


@hydra.main(version_base="1.3", config_path="pkg://initlab.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final loss so sweepers can optimise it."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        summary = run_study(cfg, run_dir)
    except RunDirTaken as exc:  # another run's directory: write nothing into it
        if multirun:
            log.error("failed  %s", exc)
            return None
        print(f"initlab: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except InitlabError as exc:
        write_json(run_dir / "summary.json", {"status": "failed", "error": str(exc), "versions": versions()})
        if multirun:  # one bad job must not stop the sweep
            log.error("failed  %s", exc)
            return None
        print(f"initlab: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except Exception as exc:  # a bug or an environment failure (e.g. out of memory): still a verdict
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        write_json(run_dir / "summary.json", {"status": "failed", "error": line, "versions": versions()})
        if multirun:
            log.exception("failed  %s", line)
            return None
        raise
    if summary["status"] == "interrupted":
        log.warning("interrupted: files so far are in %s", run_dir)
        if not multirun:
            sys.exit(EXIT_INTERRUPTED)
    return summary["final"].get("loss")


def main() -> None:
    app()
    if LAST_SWEEP.get("failed"):  # set by the sweep callback after a multirun
        print(f"initlab: {LAST_SWEEP['failed']} of {LAST_SWEEP['jobs']} jobs failed; see "
              f"{LAST_SWEEP['dir'] / 'sweep.parquet'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
