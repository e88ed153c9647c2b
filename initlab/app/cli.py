"""The `initlab` command: Hydra's entry point, signals and exit codes; the run itself is
`initlab.app.study.run_study`. Imports stay light here: `--help`, `--cfg` and each shell
completion Tab press never load torch."""

import errno
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from initlab.app.config import validate
from initlab.app.distributed import launched, peer_lost, stop
from initlab.app.help import help_text, wants_help
from initlab.app.keys import check_overrides
from initlab.app.naming import register as register_run_name
from initlab.app.sweep import current, in_process
from initlab.errors import InitlabError, Interrupted, RunDirTaken
from initlab.rundir.layout import RunLayout, SweepLayout, discard_unused
from initlab.signals import SIGNALLED, STOPPING, install_handlers, raise_interrupted
from initlab.speedups.collector import freeze_loaded, paused

log = logging.getLogger("initlab")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
register_run_name()


@hydra.main(version_base="1.3", config_path="pkg://initlab.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final loss so sweepers can optimise it."""
    hc = HydraConfig.get()
    if hc.mode == RunMode.MULTIRUN and not in_process(hc.launcher):  # a launcher's job process: the study in a child
        from initlab.app.isolation import run_isolated

        return run_isolated(_job, cfg, Path(hc.runtime.output_dir), Path(hc.sweep.dir))
    return _job(cfg)


def _job(cfg: DictConfig) -> float | None:
    """One run, or one job of a sweep: its verdict on disk, its exit code or its return."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        # inside the try: a SIGTERM landing while the handler is being installed is handled too
        for signum in STOPPING:
            signal.signal(signum, raise_interrupted)
        validate(cfg, heavy=False)  # a bad number or flag: one line before torch loads (4 s)
        # torch: only for a run (not --help, --cfg, completion); no full collection walks what
        # loads, which is then left out of every later one (initlab/speedups/collector.py)
        with paused():
            from initlab.app.study import run_study
        freeze_loaded()

        if SIGNALLED:  # a Ctrl-C during those imports that one of them swallowed (a run once went on)
            raise KeyboardInterrupt
        ranks = launched()
        if ranks is not None and ranks[0] != 0:  # torchrun: rank 0 prints and writes; the others run unseen
            summary = _other_rank(cfg, run_dir)
        else:
            summary = run_study(cfg, run_dir, current().behind if multirun and in_process(hc.launcher) else None)
        if ranks is not None:
            stop()
    except RunDirTaken as exc:  # another run's directory: write nothing into it
        if multirun:
            log.error("failed  %s", exc)
            return None
        print(f"initlab: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except InitlabError as exc:
        if multirun:  # one bad job must not stop the sweep: its row says why
            _try_write_summary(run_dir, str(exc))
            log.error("failed  %s", exc)
            return None
        if not discard_unused(run_dir):  # bad input leaves no directory named like a real run
            _try_write_summary(run_dir, str(exc))
        print(f"initlab: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except (KeyboardInterrupt, Interrupted):  # before the run began, or a second Ctrl-C once its summary was on disk
        if multirun:
            if in_process(hc.launcher):
                raise KeyboardInterrupt from None  # stop the sweep here
            return None
        if not RunLayout(run_dir).summary.exists():
            print("initlab: interrupted before the run began; nothing was recorded", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:  # a bug or an environment failure (e.g. out of memory): still a verdict
        if isinstance(exc, OSError) and _writing_failed(exc, run_dir):
            # the disk filled up or went read-only mid-run: the parts already written agree
            line = f"cannot write the run to {run_dir}: {exc.strerror or exc}"
            _try_write_summary(run_dir, line)
            if multirun:
                log.error("failed  %s", line)
                return None
            print(f"initlab: error: {line}", file=sys.stderr)
            sys.exit(1)
        line = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        lost = peer_lost(exc) if launched() is not None else None
        if lost:  # torchrun: a rank died, so this one's collective failed; torchrun reports the dead one
            _try_write_summary(run_dir, lost)
            print(f"initlab: error: {lost}", file=sys.stderr)
            sys.exit(1)
        _try_write_summary(run_dir, line)
        if multirun:
            log.exception("failed  %s", line)
            return None
        raise
    if summary["status"] == "interrupted":
        log.warning("interrupted: files so far are in %s", run_dir)
        if not multirun:
            sys.exit(EXIT_INTERRUPTED)
        if in_process(hc.launcher):  # (the other launchers' jobs stop through the sweep's stop file)
            raise KeyboardInterrupt  # stop the sweep here
    return (summary.get("final") or {}).get("loss")


def _other_rank(cfg: DictConfig, private: Path) -> dict[str, Any]:
    """A rank other than 0 under torchrun: the same run, quiet, in the private directory `_main`
    gave Hydra for it, removed at the end."""
    import shutil

    from omegaconf import open_dict

    from initlab.app.study import run_study

    logging.getLogger("initlab").setLevel(logging.ERROR)
    with open_dict(cfg):
        cfg.plots, cfg.report.html, cfg.train.progress = False, False, False
    try:
        return run_study(cfg, private)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _writing_failed(exc: OSError, run_dir: Path) -> bool:
    """An OSError from writing the run's own files (not, say, a model's or a loader's)."""
    return exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT) or str(exc.filename or "").startswith(str(run_dir))


def _try_write_summary(run_dir: Path, error: str) -> None:
    from initlab.app.study import job_overrides, versions
    from initlab.rundir.store import write_json

    try:
        write_json(RunLayout(run_dir).summary, {"status": "failed", "error": error, "overrides": job_overrides(),
                                                "versions": versions()})
    except OSError:  # the same full or read-only disk: the one-line error says it
        pass


def _output_dir_problem(args: list[str]) -> str | None:
    """Where Hydra would create the run (or sweep) directory cannot be written: a regular file
    on the way, no permission, a read-only filesystem. Checked before Hydra, which would
    answer with a traceback. Only the part before any ${...} is known here."""
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in args if a.startswith(key + "=")]
    path = given[-1] if given else ("outputs/multirun" if multirun else "outputs/runs")
    q = Path(path.split("${", 1)[0] or ".")
    while not q.exists() and q != q.parent:
        q = q.parent
    if q.exists() and not q.is_dir():
        return f"{key}={path} cannot be created: {q} is a file, not a directory"
    if q.exists() and not os.access(q, os.W_OK | os.X_OK):
        return f"{key}={path} cannot be created: {q} is not writable (permissions or a read-only filesystem)"
    return None


def _report_cut_sweep(what: str) -> None:
    """The sweep ended before its callback's report (a Ctrl-C in this process, or a launcher that
    raised): the report of the jobs' own files, and where the rest are."""
    sweep = current()
    sweep_dir = sweep.dir
    if sweep_dir is None:  # not a sweep, or stopped before its first job
        if what == "interrupted":
            print("initlab: interrupted before the run began; nothing was recorded", file=sys.stderr)
        return
    from initlab.report.build import build_sweep_report

    sweep.release()
    undrawn = sweep.behind.abandon()
    if undrawn:  # their data is on disk; `sweep/{3,4,7}` is one shell word for several jobs
        where = str(undrawn[0]) if len(undrawn) == 1 else f"{sweep_dir}/{{{','.join(p.name for p in undrawn)}}}"
        print(f"initlab: the figures of {len(undrawn)} jobs were not drawn; draw them with `initlab-report {where}`",
              file=sys.stderr)
    try:
        table, _ = build_sweep_report(sweep_dir)
        print(f"initlab: sweep {what}; the jobs that ran are in {table}", file=sys.stderr)
    except Exception as exc:  # the jobs' own files stay; the report can be rebuilt
        print(f"initlab: sweep {what}; its report failed ({exc}): `initlab-report {sweep_dir}`",
              file=sys.stderr)


def _print_help(args: list[str]) -> None:
    """`--help` without Hydra's slow group listing; the same config Hydra would compose."""
    from hydra.errors import HydraException

    try:
        text = help_text([a for a in args if not a.startswith("-")])
    except HydraException as exc:
        print(f"initlab: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:  # `initlab --help | head`
        sys.stderr.close()
    sys.exit(0)


def main() -> None:
    """The console script: the command, then an exit that skips the interpreter's teardown
    once torch is loaded (initlab/speedups/fast_exit.py)."""
    try:
        _main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if "torch" not in sys.modules:  # --help, --cfg, completion, errors before a run: nothing to skip
        sys.exit(code)
    from initlab.speedups.fast_exit import exit_now

    exit_now(code)


def _main() -> None:
    try:
        check_overrides(sys.argv[1:])
    except InitlabError as exc:
        print(f"initlab: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    if wants_help(sys.argv[1:]):
        _print_help(sys.argv[1:])
    ranks = launched()
    if ranks is not None and ranks[0] != 0:  # torchrun: Hydra's files for this rank go to a private directory
        import tempfile

        private = tempfile.mkdtemp(prefix="initlab-rank-")
        sys.argv = [a for a in sys.argv if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={private}"]
    problem = _output_dir_problem(sys.argv[1:])
    if problem:
        print(f"initlab: error: {problem}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    install_handlers()  # KeyboardInterrupt outside the run: through Hydra, which reports an Exception as an error
    try:
        app()
    except KeyboardInterrupt:  # before a run began, or in a sweep run in this process
        _report_cut_sweep("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except SystemExit:
        if current().lock is not None:  # the launcher raised (Hydra printed why) before the sweep's report
            _report_cut_sweep("stopped by its launcher")
        raise
    sweep = current()
    if sweep.stopped_by is not None:  # Ctrl-C stopped a sweep: the report covers the jobs that ran
        print(f"initlab: sweep interrupted; {sweep.jobs} jobs recorded in "
              f"{sweep.dir or 'the sweep directory'}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    if sweep.failed:  # set by the sweep callback after a multirun
        print(f"initlab: {sweep.failed} of {sweep.jobs} jobs failed; see {SweepLayout(sweep.dir).table}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
