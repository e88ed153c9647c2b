"""The `initlab` command: compose config -> validate -> seed -> device -> data -> model
-> init -> train (telemetry) -> parquet -> summary.json -> plots. One log line per stage."""

import functools
import logging
import os
import platform
import random
import resource
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

import initlab
from initlab.config import validate
from initlab.data import load_dataset
from initlab.devices import resolve_device
from initlab.diagnose import diagnose
from initlab.errors import ConfigError, InitlabError, Interrupted
from initlab.init import apply_init
from initlab.models import build_model
from initlab.models.summary import describe
from initlab.plots import plot_run
from initlab.probe import headline, probe_seeds
from initlab.store import (
    PROBE_FILE,
    THEORY_FILE,
    RunStore,
    read_hist,
    read_probe,
    read_stats,
    write_json,
)
from initlab.sweep import LAST_SWEEP
from initlab.telemetry import Schedule, Telemetry, TelemetryConfig
from initlab.theory import layer_specs, predict
from initlab.train import ProgressBar, build_optimizer, fit

log = logging.getLogger("initlab")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too


def versions() -> dict[str, str]:
    return {"initlab": initlab.__version__, "torch": torch.__version__, "hydra": hydra.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(f"signal {signum}")


def parallel_jobs() -> int:
    """How many jobs of this sweep run at once on this machine (1 unless a parallel launcher)."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:  # no Hydra context (tests calling run_study directly)
        return 1
    n = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")) else None
    if n is None:
        return 1
    return os.cpu_count() or 1 if n < 0 else max(1, int(n))


def configure_threads(threads: object) -> None:
    """`auto`: torch's default alone; cores / parallel jobs under joblib, so jobs don't
    oversubscribe the CPU."""
    if threads == "auto":
        jobs = parallel_jobs()
        if jobs > 1:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        torch.set_num_threads(threads)
    else:
        raise ConfigError("threads", threads, "expected auto or an integer >= 1")


def job_device(spec: object) -> torch.device:
    """Parallel sweep jobs with device=auto spread over the visible GPUs by job number."""
    device = resolve_device(spec)
    if spec == "auto" and device.type == "cuda" and torch.cuda.device_count() > 1 and parallel_jobs() > 1:
        device = torch.device("cuda", HydraConfig.get().job.num % torch.cuda.device_count())
    return device


def first_batch(data: Any, cfg: DictConfig) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    """Step 0's batch, drawn once when first asked for: what LSUV, the theory overlay and
    the probe look at (a DataLoader would otherwise start its workers for each of them)."""
    return functools.cache(lambda: next(iter(data.train_batches(cfg.train.batch_size, cfg.seed))))


def run_study(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Run one study into `run_dir`; returns the summary written to summary.json."""
    t0 = time.perf_counter()
    validate(cfg)
    configure_threads(cfg.get("threads", "auto"))
    device = job_device(cfg.device)
    seed_everything(cfg.seed)
    data = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), device, cfg.seed)
    if data.n_train < cfg.train.batch_size:
        raise ConfigError("train.batch_size", cfg.train.batch_size,
                          f"expected at most the {data.n_train} training samples of data={data.name}")
    log.info("data    %s: %d train / %d held-out, shape %s, %d classes, on %s",
             data.name, data.n_train, data.n_val, list(data.in_shape), data.num_classes, device)
    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    icfg = OmegaConf.to_container(cfg.init, resolve=True)
    batch0 = first_batch(data, cfg)

    def make_model(seed: int) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        """Seeded, built and initialised on the CPU: the same seed gives the same weights on
        every device, whatever the data loading drew before."""
        seed_everything(seed)
        model = build_model(mcfg["name"], mcfg, data.in_shape, data.num_classes, cfg.bn)
        report = apply_init(model, icfg, mcfg.get("act", "relu"), float(mcfg.get("act_slope", 0.01)),
                            batch=lambda: batch0()[0].cpu())
        return model, report

    model, init_report = make_model(cfg.seed)
    info = describe(model, data.in_shape)
    specs = layer_specs(model, data.in_shape)  # the theory overlay reads the weights as initialised
    model.to(device)
    Console(stderr=True).print(info.table(f"{mcfg['name']} (bn={str(cfg.bn).lower()})"))
    log.info("init    %s touched %d modules, e.g. %s: %s", cfg.init.name, len(init_report),
             init_report[0]["module"], init_report[0]["init"])
    optimizer = build_optimizer(model, OmegaConf.to_container(cfg.optim, resolve=True))
    tcfg = OmegaConf.to_container(cfg.telemetry, resolve=True)
    tel_cfg = TelemetryConfig.from_cfg(tcfg)
    telemetry = Telemetry(model, tel_cfg) if tcfg["enabled"] else None
    schedule = Schedule(max(cfg.train.steps, 1), tcfg["first"], tcfg["every"], tcfg.get("log_points", 0))
    meta = {"config": OmegaConf.to_container(cfg, resolve=True), "versions": versions(),
            "hist": {**tel_cfg.hist.as_dict(), "note": "histograms bin a strided sample of at most "
                     "`sample` elements per tensor; every other statistic uses all elements"}
            if tel_cfg.hist else None}
    store = RunStore(run_dir, meta, flush_every=tcfg["flush_every"])
    setup_s = time.perf_counter() - t0
    callbacks = [ProgressBar(cfg.train.batch_size)] if cfg.train.progress else []
    log.info("train   %d steps of batch %d (%s)", cfg.train.steps, cfg.train.batch_size,
             "probe at init: no update" if cfg.train.steps == 0 else f"optim={cfg.optim.name} lr={cfg.optim.lr}")
    try:
        result = fit(model, data, optimizer, cfg.train, telemetry, schedule, store, cfg.seed, callbacks)
    finally:
        store.flush()  # whatever happens, what was recorded reaches the disk
    _theory(run_dir, specs, batch0)
    probe = _probe(run_dir, cfg, batch0(), lambda s: make_model(s)[0], tel_cfg, device) if cfg.probe.seeds > 1 else None
    rows = result.rows
    final = {k: rows[-1].get(k) for k in ("loss", "accuracy", "val_loss", "val_accuracy")} if rows else {}
    step_times = [r["step_time"] for r in rows]
    summary = {
        "status": result.status,
        "steps_requested": cfg.train.steps,
        "steps_done": result.steps_done,
        "final": final,
        "diverged": result.diverged,
        "device": str(device),
        "data": {"name": data.name, "n_train": data.n_train, "n_val": data.n_val, "shape": list(data.in_shape),
                 "classes": data.num_classes},
        "model": {"name": mcfg["name"], "params": info.params, "macs": info.macs},
        "params": info.params,
        "macs": info.macs,
        "init": init_report,
        "telemetry": {"logged_steps": store.logged_steps, "parts": store.parts,
                      "max_buffered_steps": store.max_buffered, "flush_every": store.flush_every},
        "timings": {
            "setup_s": setup_s,
            "train_s": result.train_s,
            "step_time_median_s": float(np.median(step_times)) if step_times else None,
            "total_s": time.perf_counter() - t0,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # process peak so far
        },
        "versions": versions(),
    }
    if probe is not None:
        summary["probe"] = probe
    summary["flags"] = diagnose(read_stats(run_dir), summary, OmegaConf.to_container(cfg.diagnose))
    store.write_summary(summary)
    _flag_table(summary["flags"])
    if cfg.get("plots", True):
        _plots(run_dir, rows, meta["config"])
    if result.status == "diverged":
        d = result.diverged
        log.warning("done    status=diverged: non-finite loss at step %d; first non-finite layer: %s",
                    d["step"], f"{d['layer']} (index {d['layer_idx']})" if d["layer"] else "none recorded")
    else:
        log.info("done    status=%s loss=%.4g accuracy=%.3f -> %s", result.status,
                 final.get("loss", float("nan")), final.get("accuracy") or 0.0, run_dir)
    return summary


def _theory(run_dir: Path, specs: dict | None, batch0: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> None:
    """theory.parquet: predicted step-0 std per layer beside the measured one."""
    if specs is None:  # residual nets: no prediction, no need for a batch
        return
    stats = read_stats(run_dir)
    if stats.empty:
        return
    x = batch0()[0].detach().double()
    theory = predict(specs, stats[stats["step"] == 0], float(x.mean()), float((x * x).mean()))
    if len(theory):
        theory.assign(step=0).to_parquet(run_dir / THEORY_FILE, index=False)


def _probe(run_dir: Path, cfg: DictConfig, batch: tuple[torch.Tensor, torch.Tensor], make_model: Any,
           tel_cfg: TelemetryConfig, device: torch.device) -> dict[str, Any]:
    """probe.seeds=N: step 0 again for seeds seed..seed+N-1, same batch -> probe.parquet."""
    seeds = range(cfg.seed, cfg.seed + cfg.probe.seeds)
    t0 = time.perf_counter()
    per_seed = probe_seeds(make_model, batch, seeds, tel_cfg, device)
    per_seed.to_parquet(run_dir / PROBE_FILE, index=False)
    out = headline(per_seed)
    act = out.get("act_std_last_over_first")
    log.info("probe   %d seeds in %.1f s%s", len(seeds), time.perf_counter() - t0,
             f": activation std last/first layer {act['mean']:.3g} (sd {act['sd']:.2g}, "
             f"{act['min']:.3g}..{act['max']:.3g})" if act else "")
    return out


def _flag_table(flags: list[dict[str, Any]]) -> None:
    """What went wrong, said at the end of the run where the user is looking."""
    if not flags:
        log.info("diagnose no flags: activations and gradients keep their scale, no dead layers")
        return
    table = Table(title="diagnosis", title_justify="left")
    table.add_column("flag", style="bold yellow")
    table.add_column("what it means")
    for f in flags:
        table.add_row(f["flag"], f["detail"])
    Console(stderr=True).print(table)


def _plots(run_dir: Path, rows: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Plots come last and never cost the recorded data."""
    import pandas as pd

    try:
        plot_run(read_stats(run_dir), pd.DataFrame(rows), config, run_dir / "plots", read_hist(run_dir),
                 read_probe(run_dir))
    except Exception as exc:  # a plotting bug must not turn a finished study into a crash
        log.error("plots   failed (%s); rebuild later with `initlab-report %s`", exc, run_dir)


@hydra.main(version_base="1.3", config_path="pkg://initlab.conf", config_name="config")
def app(cfg: DictConfig) -> float | None:
    """Hydra entry point; returns the final loss so sweepers can optimise it."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        summary = run_study(cfg, run_dir)
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
