"""The run recipe: compose config -> validate -> seed -> device -> data -> model -> init
-> train (through initlab.watch) -> theory -> probe -> flags -> summary.json -> plots,
one log line per stage. `run_study(cfg, run_dir)` is what the `initlab` command calls."""

import functools
import json
import logging
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console
from rich.table import Table

from initlab.app.behind import Behind
from initlab.app.config import norm_spec, validate
from initlab.app.distributed import Shard, check, launched, start, sync_batch_norm, wrap
from initlab.app.width import parametrised, run_coord
from initlab.data import load_dataset
from initlab.defaults import preset
from initlab.devices import check_fits, resolve_device
from initlab.errors import ConfigError, Interrupted
from initlab.init import apply_init
from initlab.models import build_model
from initlab.models.external import EXTERNAL
from initlab.models.summary import describe
from initlab.precision import FORMAT, precision_of
from initlab.probe import headline, probe
from initlab.record.watcher import Watch
from initlab.record.watcher import versions as _versions
from initlab.rundir.layout import SUMMARY_FILE
from initlab.rundir.lock import claim_run, release
from initlab.rundir.store import read_stats, write_json, write_probe, write_theory
from initlab.signals import signals_deferred
from initlab.speedups.allocator import keep_freed_memory
from initlab.telemetry import TelemetryConfig
from initlab.theory import layer_specs, predict
from initlab.train import ProgressBar, build_optimizer, build_scheduler, fit

log = logging.getLogger("initlab")


def versions() -> dict[str, str]:
    import hydra

    return {**_versions(), "hydra": hydra.__version__}


def job_overrides() -> list[str] | None:
    """The command-line overrides of this run, as its summary records them: the sweep table's
    labels come from here, not from .hydra/, which a later job in the same directory rewrites."""
    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra context (tests calling run_study directly)
        return None


def seed_everything(seed: int, cpu_only: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    if cpu_only:  # what a model built on the CPU draws from; torch.manual_seed also queues every
        torch.default_generator.manual_seed(seed)  # accelerator's seed with a stack trace: 2 ms a call
    else:
        torch.manual_seed(seed)  # every device's generator too


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


def _check_external(cfg: DictConfig) -> None:
    """`bn` and `norm` shape zoo models only: on an external model giving them would be a
    silent no-op."""
    if cfg.model.name not in EXTERNAL:
        return
    if cfg.bn is not None:
        raise ConfigError("bn", cfg.bn, f"bn does not apply to model={cfg.model.name} (it brings its own "
                          "normalisation); leave bn out")
    if cfg.norm.name != "auto":
        raise ConfigError("norm", cfg.norm.name, f"norm does not apply to model={cfg.model.name} (it brings its "
                          "own normalisation); leave norm out")


def run_study(cfg: DictConfig, run_dir: Path, behind: Behind | None = None) -> dict[str, Any]:
    """Run one study into `run_dir`; returns the summary written to summary.json. `behind`:
    hand the figures (and report.html) to that worker instead of drawing them here."""
    t0 = time.perf_counter()
    lock = claim_run(run_dir)  # before any work: a run owns its directory
    try:
        return _run(cfg, run_dir, t0, behind)
    finally:
        release(lock)


class _Stage:
    """Which part of the run is going on, for the summary of a run interrupted outside training."""

    name = "setup"
    watch: Watch | None = None


def _run(cfg: DictConfig, run_dir: Path, t0: float, behind: Behind | None) -> dict[str, Any]:
    stage = _Stage()
    try:
        return _stages(cfg, run_dir, t0, stage, behind)
    except (KeyboardInterrupt, Interrupted):
        with signals_deferred():  # a second Ctrl-C waits until the summary is on disk
            return _interrupted(run_dir, stage)


def _interrupted(run_dir: Path, stage: _Stage) -> dict[str, Any]:
    """summary.json for a Ctrl-C/SIGTERM during set-up, theory, the probe, the summary or the
    plots: status `interrupted`, where, and every step already done (the parts stay)."""
    log.warning("interrupted during %s: files so far are in %s", stage.name, run_dir)
    watch = stage.watch
    if watch is None:  # set-up: nothing recorded yet
        summary = {"status": "interrupted", "interrupted_during": stage.name, "steps_done": 0,
                   "overrides": job_overrides(), "versions": versions()}
        write_json(run_dir / SUMMARY_FILE, summary)
        return summary
    if not watch.finished:
        watch.status = "interrupted"
        return watch.finish({"interrupted_during": stage.name}, plots=False)
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())  # written; the plots were under way
    summary.update(status="interrupted", interrupted_during=stage.name)
    write_json(run_dir / SUMMARY_FILE, summary)
    return summary


def _samples_to_steps(cfg: DictConfig) -> None:
    """train.samples, when set, fixes the samples seen: steps = samples // batch_size (so a
    batch-size sweep compares equal data), written into the config the run records."""
    samples = cfg.train.get("samples")
    if samples is not None:
        with open_dict(cfg):
            cfg.train.steps = max(int(samples) // int(cfg.train.batch_size), 1)


def _stages(cfg: DictConfig, run_dir: Path, t0: float, stage: _Stage, behind: Behind | None) -> dict[str, Any]:
    validate(cfg)
    _samples_to_steps(cfg)
    _check_external(cfg)
    configure_threads(cfg.threads)
    keep_freed_memory()  # before the first large tensor: see allocator.py
    device = job_device(cfg.device)
    ranks = launched()  # under torchrun: (rank, world size)
    if ranks is not None:
        check(cfg, ranks[1], device)
        device = start(device)
    precision = precision_of(OmegaConf.to_container(cfg.precision, resolve=True), device)  # one line if it cannot run
    seed_everything(cfg.seed)
    data = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), device, cfg.seed)
    if data.n_train is not None and data.n_train < cfg.train.batch_size:
        raise ConfigError("train.batch_size", cfg.train.batch_size,
                          f"expected at most the {data.n_train} training samples of data={data.name}")
    log.info("data    %s: %s / %d held-out, shape %s, %d classes, on %s", data.name,
             "a fresh stream" if data.n_train is None else f"{data.n_train} train", data.n_val,
             list(data.in_shape), data.num_classes, device)
    mcfg = OmegaConf.to_container(cfg.model, resolve=True)
    norm = norm_spec(cfg)
    icfg = OmegaConf.to_container(cfg.init, resolve=True)
    batch0 = first_batch(data, cfg)

    def make_model(seed: int, init: dict[str, Any] = icfg, report: bool = True
                   ) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
        """Seeded, built and initialised on the CPU: the same seed gives the same weights on
        every device, whatever the data loading drew before."""
        seed_everything(seed, cpu_only=True)  # the run's own seed_everything(cfg.seed) seeded the devices
        model = build_model(mcfg["name"], mcfg, data.in_shape, data.num_classes, norm=norm)
        records = apply_init(model, init, mcfg["act"], float(mcfg["act_slope"]), batch=lambda: batch0()[0].cpu(),
                             weight_std=report)
        return model, records

    ocfg = OmegaConf.to_container(cfg.optim, resolve=True)
    if ocfg.get("lr_batch"):  # the linear scaling rule
        ocfg["lr"] = float(ocfg["lr"]) * int(cfg.train.batch_size) / int(ocfg["lr_batch"])

    def build_at(at: dict[str, Any], init: bool = True) -> torch.nn.Module:
        """The model with config `at` (another width), initialised as the run's (for the base
        model of a parametrisation: only its shapes are read)."""
        m = build_model(at["name"], at, data.in_shape, data.num_classes, norm=norm)
        if init:
            apply_init(m, icfg, at["act"], float(at["act_slope"]), batch=lambda: batch0()[0].cpu(), weight_std=False)
        return m

    if cfg.coord.run:  # experiment=coord_check: the widths instead of a training run
        stage.name = "coord"
        meta = {"config": {**OmegaConf.to_container(cfg, resolve=True), "norm": norm.as_dict()},
                "versions": versions()}
        coord = run_coord(cfg, run_dir, mcfg, ocfg, build_at, batch0(), device, meta)
        summary = {"status": "ok", "coord_check": coord, "device": str(device), "overrides": job_overrides(),
                   "versions": versions(),
                   "timings": {"total_s": time.perf_counter() - t0}}
        write_json(run_dir / SUMMARY_FILE, summary)
        log.info("done    coordinate check: %s -> %s", ", ".join(f"{p}: {v['verdict']}" for p, v in
                                                              coord["verdict"].items()), run_dir)
        return summary

    try:
        with torch.device("meta"):  # shapes only: no memory, no random numbers drawn
            shapes = build_model(mcfg["name"], mcfg, data.in_shape, data.num_classes, norm=norm)
    except Exception:  # noqa: BLE001 - a builder that must compute: the real build says what is wrong
        shapes = None
    if shapes is not None:
        check_fits(shapes, device)  # a width too large: one line, before the allocation fails
    model, init_report = make_model(cfg.seed)
    if ranks is not None and norm.sync:
        model = sync_batch_norm(model)
    groups, param_info = parametrised(cfg, model, mcfg, ocfg, lambda at: build_at(at, init=False))
    info = describe(model, data.in_shape)
    specs = layer_specs(model, data.in_shape)  # the theory overlay reads the weights as initialised
    model.to(device)
    label = mcfg["name"] if mcfg["name"] not in EXTERNAL else mcfg.get("arch") or mcfg.get("_target_")
    _show_model(info, f"{label} (norm={norm.name})" if mcfg["name"] not in EXTERNAL else label)
    log.info("init    %s touched %d modules, e.g. %s: %s", cfg.init.name, len(init_report),
             init_report[0]["module"], init_report[0]["init"])
    optimizer = build_optimizer(model, ocfg, groups)
    scheduler = build_scheduler(optimizer, ocfg, int(cfg.train.steps))
    tel_cfg = TelemetryConfig.of(cfg.telemetry)
    held_in = FORMAT.get(precision.name)
    if tel_cfg.enabled and held_in and held_in not in tel_cfg.formats:  # the run's own format is always measured
        tel_cfg = replace(tel_cfg, formats=[held_in, *tel_cfg.formats])
    meta = {"config": {**OmegaConf.to_container(cfg, resolve=True), "norm": norm.as_dict()},  # as built
            "versions": versions(),
            "hist": {**tel_cfg.hist.as_dict(), "note": "histograms bin a strided sample of at most "
                     "`sample` elements per tensor; every other statistic uses all elements"}
            if tel_cfg.hist else None}
    watch = Watch(model, optimizer, out=run_dir, telemetry=tel_cfg, total_steps=max(cfg.train.steps, 1),
                  plots=cfg.plots, meta=meta)
    stage.watch, stage.name = watch, "training"
    setup_s = time.perf_counter() - t0
    callbacks = [ProgressBar(cfg.train.batch_size)] if cfg.train.progress and not (ranks and ranks[0]) else []
    log.info("train   %d steps of batch %d (%s)", cfg.train.steps, cfg.train.batch_size,
             "probe at init: no update" if cfg.train.steps == 0 else f"optim={cfg.optim.name} lr={ocfg['lr']:g}"
             + ("" if precision.name == "fp32" else f", {precision.name} autocast, loss scale "
                f"{precision.summary()['loss_scale']}"))
    try:
        trained, shards = (wrap(model, device), Shard(data, *ranks)) if ranks else (model, data)
        result = fit(trained, shards, optimizer, cfg.train, watch, cfg.seed, callbacks, scheduler, precision)
    finally:
        watch.flush()  # whatever happens, what was recorded reaches the disk
    stage.name = "theory"
    _theory(run_dir, specs, batch0)
    stage.name = "probe"
    probe = None
    if (cfg.probe.seeds > 1 or cfg.probe.inits) and result.status != "interrupted":  # not after a Ctrl-C
        schemes = {name: icfg if name == cfg.init.name else preset("init", name)
                   for name in cfg.probe.inits or [cfg.init.name]}
        probe = _probe(run_dir, cfg, batch0(), lambda init, s: make_model(s, schemes[init], report=False)[0], list(schemes),
                       tel_cfg, device)
    step_times = [r["step_time"] for r in result.rows]
    watch.status = result.status
    extra: dict[str, Any] = {
        "overrides": job_overrides(),
        "steps_requested": cfg.train.steps,
        "steps_done": result.steps_done,
        "device": str(device),
        "data": {"name": data.name, "n_train": data.n_train, "n_val": data.n_val, "shape": list(data.in_shape),
                 "classes": data.num_classes},
        "model": {"name": mcfg["name"], "params": info.params, "macs": info.macs},
        "params": info.params,
        "macs": info.macs,
        "init": init_report,
        "param": param_info,
        "precision": precision.summary(),
        "world_size": ranks[1] if ranks else 1,
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
        extra["probe"] = probe
    if result.status == "interrupted":
        extra["interrupted_during"] = "training"
    stage.name = "summary"
    summary = watch.finish(extra, OmegaConf.to_container(cfg.diagnose), plots=False)
    _flag_table(summary.get("flags") or [])
    if cfg.plots and behind is not None:  # the figures, and the page that embeds them, behind the sweep
        behind.submit(run_dir, bool(cfg.report.html))
    else:
        if cfg.plots:
            stage.name = "plots"
            watch.draw()
        if cfg.report.html:
            stage.name = "report"
            from initlab.report.html import write_html

            log.info("report  %s", write_html(run_dir))
    final = summary["final"]
    if summary["status"] == "diverged":
        d = summary["diverged"]
        what = f"non-finite loss at step {d['step']}" if d.get("loss") is not None else \
            f"non-finite {d.get('kind')} at step {d['step']}"
        log.warning("done    status=diverged: %s; first non-finite layer: %s -> %s", what,
                    f"{d['layer']} (index {d['layer_idx']})" if d.get("layer") else "none recorded", run_dir)
    else:
        log.info("done    status=%s %s -> %s", summary["status"], final_words(final), run_dir)
    return summary


_SHOWN: set[tuple] = set()  # the model tables this process has printed (a sweep's jobs share one)


def _show_model(info: Any, title: str) -> None:
    """The model's table, once per process for each distinct model: the jobs of a sweep run in
    one process print it once, not once a job."""
    key = (title, tuple(info.rows))
    if key not in _SHOWN:
        _SHOWN.add(key)
        Console(stderr=True).print(info.table(title))


def final_words(final: dict[str, Any]) -> str:
    """The run's last line: the held-out loss and accuracy where there are some, and the training
    loss over the last steps (one minibatch is noise), each labelled."""
    def num(v: Any, fmt: str) -> str | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    parts = [(f"held-out loss={num(final.get('val_loss'), '.4g')}", num(final.get("val_loss"), ".4g")),
             (f"held-out accuracy={num(final.get('val_accuracy'), '.3f')}", num(final.get("val_accuracy"), ".3f")),
             (f"training loss (last {final.get('loss_avg_steps')} steps)={num(final.get('loss_avg'), '.4g')}",
              num(final.get("loss_avg"), ".4g"))]
    said = [text for text, value in parts if value is not None]
    return ", ".join(said) or "no loss recorded (a probe at init)"


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
        write_theory(run_dir, theory.assign(step=0))


def _probe(run_dir: Path, cfg: DictConfig, batch: tuple[torch.Tensor, torch.Tensor], make_model: Any,
           inits: list[str], tel_cfg: TelemetryConfig, device: torch.device) -> dict[str, Any]:
    """probe.seeds=N: step 0 again for seeds seed..seed+N-1 under each init scheme, same
    batch -> probe.parquet."""
    draws = [(init, s) for init in inits for s in range(cfg.seed, cfg.seed + cfg.probe.seeds)]
    t0 = time.perf_counter()
    per_draw, how = probe(make_model, batch, draws, tel_cfg, device, cfg.probe.stacked)
    write_probe(run_dir, per_draw)
    seconds = time.perf_counter() - t0
    out = {**headline(per_draw), "path": how, "seconds": seconds}
    act = out.get("act_std_last_over_first")
    said = ""
    if act and "mean" in act:
        said = f": activation std last/first layer {act['mean']:.3g} (sd {act['sd']:.2g}, {act['min']:.3g}..{act['max']:.3g})"
    if act and act.get("nonfinite_draws"):  # a draw that diverged has no ratio: counted, not averaged
        said += f"{',' if said else ':'} {act['nonfinite_draws']} of {len(draws)} draws non-finite"
    log.info("probe   %d draws (%d inits x %d seeds) in %.1f s (%s)%s", len(draws), len(inits), cfg.probe.seeds,
             seconds, how, said)
    if "inits" in out:  # several schemes: each one's depth ratios, side by side
        _probe_table(out["inits"], cfg.probe.seeds)
    return out


def _probe_table(schemes: dict[str, dict[str, Any]], seeds: int) -> None:
    """probe.inits: per scheme, the activation std last/first and the gradient std first/last
    over its weight draws (mean [min–max]); what the diagnosis reads, for every scheme."""
    def cell(r: dict[str, Any] | None) -> str:
        if not r or "mean" not in r:
            return "non-finite" if r and r.get("nonfinite_draws") else "—"
        text = f"{r['mean']:.3g} [{r['min']:.3g}–{r['max']:.3g}]" if r.get("n", 1) > 1 else f"{r['mean']:.3g}"
        return text + (f", {r['nonfinite_draws']} non-finite" if r.get("nonfinite_draws") else "")

    table = Table(title=f"probe: {seeds} weight draw(s) per init", title_justify="left")
    for col in ("init", "activation std last/first", "gradient std first/last"):
        table.add_column(col, justify="left" if col == "init" else "right")
    for name, r in schemes.items():
        table.add_row(name, cell(r.get("act_std_last_over_first")), cell(r.get("grad_std_first_over_last")))
    Console(stderr=True).print(table)


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
