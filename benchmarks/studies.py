"""`make studies`: run the classic studies as a user types them, over 3 seeds where a study
compares training outcomes, and write the table the docs' studies page includes.

Each arm's training loss is the mean over its last 50 steps (`loss_avg`), beside the held-out
loss and accuracy; a comparison is claimed only when the seed ranges separate. The table goes
to benchmarks/results/studies_cpu.md (or _cuda), which docs/studies.md includes as it is. Each
study's rows are stamped with the commit they ran at; a partial re-run says which rows are new.

    python -m benchmarks.studies                      # all of them (about 35 min on 2 cores)
    python -m benchmarks.studies fastai_conv4 lsuv    # some; the others keep their rows
    python -m benchmarks.studies --figures NAME ...   # redraw the docs' figures (docs/figures/)
"""

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS, machine

FIGURES = Path(__file__).parents[1] / "docs" / "figures"
SEEDS = "0,1,2"
HEADER = ["study", "data", "arm", "seeds", "status", "act std last/first, step 0",
          "training loss, last 50 steps", "held-out loss", "held-out accuracy"]


@dataclass(frozen=True)
class Study:
    name: str
    arms: tuple[str, ...]  # the sweep's columns that name an arm
    seeds: bool = True  # compared on training outcomes: run over SEEDS (False: step 0 only, or the config sweeps seed)
    figure: str = "headline"  # the sweep figure the docs show (docs/figures/NAME.png)
    width: bool = False  # a width study: headline lines of its own, not rows of the table
    precision: bool = False  # a precision study: the table's rows, and lines on each arm's gradient underflow


STUDIES = [
    Study("seed_mlp100", ("init.std", "model.act"), seeds=False),
    Study("glorot_tanh", ("init",), seeds=False),
    Study("fastai_conv4", ("init",)),
    Study("he_deep_relu", ("init",)),
    Study("d2l_bn_lenet", ("bn",)),
    Study("resnet_bn_ablation", ("bn", "init")),
    Study("bn_position", ("model.norm_position",), seeds=False),  # its config sweeps seed=0,1,2
    Study("lsuv", ("init",)),
    Study("norm_zoo", ("norm",)),
    # one seed each (4 min apiece on 2 cores); their own tests assert their study-specific headlines
    Study("small_batch_norm", ("norm", "train.batch_size"), seeds=False),
    Study("ln_position", ("model.depth", "model.norm_position", "optim.warmup_steps"), seeds=False),
    # width (docs/width.md): the coordinate check (one run) and learning-rate transfer (a sweep, one seed)
    Study("coord_check", (), seeds=False, figure="coord_check", width=True),
    Study("lr_transfer", ("param", "model.width", "optim.lr"), seeds=False, figure="lr_transfer", width=True),
    # precision (docs/precision.md): fp32, bf16 and fp16 with and without loss scaling
    Study("loss_scaling", ("precision", "precision.loss_scale"), precision=True),
]


def run_study(study: Study, out: Path, figures: bool = False) -> pd.DataFrame:
    """One study's sweep as `initlab experiment=NAME` (plus seeds), each job's summary beside it;
    with `figures`, as the docs' command runs it (its own seeds, plots on). The coordinate check
    is one run: its summary's verdict and slopes, as one row."""
    where = "hydra.run.dir" if study.name == "coord_check" else "hydra.sweep.dir"
    cmd = [sys.executable, "-m", "initlab", f"experiment={study.name}", f"{where}={out}",
           f"plots={str(figures or study.name == 'coord_check').lower()}", "train.progress=false"]
    if study.seeds and not figures:
        cmd.append(f"seed={SEEDS}")
    t0 = time.perf_counter()
    # no dataset files: the studies' own fallbacks, the same on every machine
    env = {**os.environ, "INITLAB_DATA": str(out.parent / "no-data")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"studies: {' '.join(cmd[2:])} failed:\n{proc.stderr[-3000:]}")
    if study.name == "coord_check":
        df = pd.DataFrame({"summary": [json.loads((out / "summary.json").read_text())]})
    else:
        df = pd.read_parquet(out / "sweep.parquet")
        df["summary"] = [json.loads((out / p / "summary.json").read_text()) for p in df["path"]]
    df.attrs["wall_s"] = time.perf_counter() - t0
    df.attrs["dir"] = out
    return df


def width_lines(study: Study, df: pd.DataFrame) -> list[str]:
    """A width study's headline: the coordinate check's verdict per param; each width's best
    learning rate and the optimum's shift."""
    if study.name == "coord_check":
        c = df["summary"].iloc[0]["coord_check"]
        out = []
        for param, v in c["verdict"].items():
            drift = "; ".join(f"`{d['layer']}` {d['slope']:+.2f} from step {d['from_step']}" for d in v["drifting"])
            out.append(f"`coord_check` (MLP, widths {c['widths'][0]}–{c['widths'][-1]}, {c['seeds']} seeds, "
                       f"{c['steps']} steps): param={param} {v['verdict']}, max |slope| {v['max_abs_slope']:.2f}"
                       + (f" ({drift})" if drift else ""))
        return out
    from initlab.report.plots.transfer import lr_optima

    optima = lr_optima(df[df["status"].isin(["ok", "diverged"])], "model.width", "param")
    return [f"`lr_transfer` (MLP, Adam, 200 steps, 1 seed): param={p}: best lr by width "
            + ", ".join(f"{w}: {r:.3g}" for w, r in zip(g["width"], g["best_lr"]))
            + f"; the optimum moves {int(g['shift'].iloc[-1]):+d} grid steps from the smallest to the largest width"
            for p, g in optima.groupby("param", sort=False)]


def precision_lines(study: Study, df: pd.DataFrame) -> list[str]:
    """Per arm: the first layer's gradient (dLoss/d output of the first Linear) at step 0, exactly
    zero as recorded and what fp16 would flush of it (fp32 and bf16 runs), and the scaler's
    skipped steps and final scale; medians over the seeds."""
    import initlab

    out = []
    for key, rows in df.groupby(list(study.arms), sort=False):
        zeros, flushed = [], []
        for path in rows["path"]:
            stats = initlab.load_run(df.attrs["dir"] / path).stats
            g = stats[(stats["kind"] == "grad") & (stats["module_type"] == "Linear") & (stats["step"] == 0)]
            first = g.sort_values("layer_idx").iloc[0]
            zeros.append(first["zero_frac"])
            flushed.append(first["fp16_zero"])
        prec = [s["precision"] for s in rows["summary"]]
        held = rows["summary"].iloc[0]["precision"]["name"] == "fp16"
        out.append(f"`{study.name}` {arm_label(study, key)} ({len(rows)} seeds): the first layer's gradient at step 0 "
                   f"is {pd.Series(zeros).median():.0%} exactly zero"
                   + ("" if held else f", and fp16 would flush {pd.Series(flushed).median():.0%} of its non-zero values")
                   + f"; skipped steps {spread(pd.Series([p['skipped_steps'] for p in prec], dtype=float))}"
                   + (f", final scale {spread(pd.Series([p['final_scale'] for p in prec], dtype=float))}"
                      if prec[0]["final_scale"] is not None else ""))
    return out


def spread(values: pd.Series, digits: int = 3) -> str:
    """'median [min–max]' over seeds, one value alone; non-finite values counted, not hidden."""
    finite = values[values.map(lambda v: v is not None and math.isfinite(v))]
    bad = len(values) - len(finite)
    if finite.empty:
        return "non-finite" if bad else "—"
    text = f"{finite.median():.{digits}g}"
    if len(finite) > 1:
        text += f" [{finite.min():.{digits}g}–{finite.max():.{digits}g}]"
    return text + (f", {bad} non-finite" if bad else "")


def step0(rows: pd.DataFrame) -> str:
    probe = rows["summary"].iloc[0].get("probe")
    if probe:  # a probe over weight draws: its own spread
        r = probe["act_std_last_over_first"]
        return f"{r['mean']:.3g} ± {r['sd']:.2g} ({r['n']} draws)"
    return f"{spread(rows['act_std_ratio'])} (first {spread(rows['act_std_first'])})"


def arm_label(study: Study, key: tuple) -> str:
    return ", ".join(f"{col.split('.')[-1]}={v}" for col, v in zip(study.arms, key, strict=True))


def rows_of(study: Study, df: pd.DataFrame) -> list[list[str]]:
    out = []
    data = df["summary"].iloc[0]["data"]["name"]
    for key, rows in df.groupby(list(study.arms), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        status = ", ".join(f"{s} ×{n}" if len(rows) > 1 else s for s, n in rows["status"].value_counts().items())
        if len(rows) == 1 and rows["status"].iloc[0] == "diverged":  # say where
            status += f" at step {int(rows['diverged_step'].iloc[0])}, `{rows['diverged_layer'].iloc[0]}`"
        trained = rows["steps_done"].max() > 0
        out.append([f"`{study.name}`", data, arm_label(study, key), str(len(rows)), status, step0(rows),
                    spread(rows["loss_avg"]) if trained else "— (step 0 only)",
                    spread(rows["val_loss"]) if trained else "—",
                    spread(rows["val_accuracy"]) if trained else "—"])
    return out


def verdict(study: Study, df: pd.DataFrame, column: str) -> str:
    """Arms ordered by median `column`; each neighbour pair claimed only when its ranges separate."""
    groups = [(arm_label(study, k if isinstance(k, tuple) else (k,)), g[column].astype(float))
              for k, g in df.groupby(list(study.arms), sort=False)]
    groups = [(a, v[v.map(math.isfinite)]) for a, v in groups]
    groups = sorted([g for g in groups if not g[1].empty], key=lambda g: g[1].median())
    parts = [groups[0][0]] if groups else []
    for (_, lo), (arm, hi) in zip(groups, groups[1:]):
        parts.append(("< " if lo.max() < hi.min() else "≈ ") + arm)
    return " ".join(parts)


def verdicts(study: Study, df: pd.DataFrame) -> list[str]:
    if df["steps_done"].max() == 0 or df.groupby(list(study.arms)).size().min() < 3:
        return []
    return [f"`{study.name}` ({df['summary'].iloc[0]['data']['name']}, {df.groupby(list(study.arms)).size().min()} "
            f"seeds): training loss {verdict(study, df, 'loss_avg')}; held-out loss {verdict(study, df, 'val_loss')}"]


Table = dict[str, tuple[list[list[str]], list[str], float, str]]  # study: rows, orderings, wall s, commit


def commit() -> str:
    """The commit the studies run at (`+dirty` when the tree has changes)."""
    root = Path(__file__).parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "initlab", "conf"], cwd=root,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _is_ordering(line: str) -> bool:
    """An ordering line (`verdicts`), not a precision study's per-arm line."""
    return "): training loss" in line


def render(tables: Table, fresh: list[str] | None = None) -> str:
    """The table; `fresh`: the studies this run re-ran (None: all of them)."""
    commits = {tables[n][3] for n in tables}
    stamp = f"at commit {next(iter(commits))}" if len(commits) == 1 else "at the commits beside each study's wall time"
    lines = [f"Generated by `make studies` (`benchmarks/studies.py`) {stamp}, on: {machine()}", ""]
    if fresh is not None:
        lines += [f"Partial re-run: {', '.join(fresh)} re-ran; the other studies' rows are from earlier runs.", ""]
    lines += [
             "| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    width = {s.name for s in STUDIES if s.width}
    for name in [s.name for s in STUDIES if s.name in tables and not s.width]:
        lines += ["| " + " | ".join(r) + " |" for r in tables[name][0]]
    lines += ["", "Orderings (by median; `<` where the seed ranges separate, `≈` where they overlap: no "
              "difference at this budget):", ""]
    lines += [f"- {v}" for name in tables if name not in width for v in tables[name][1] if _is_ordering(v)] \
        or ["- none run over seeds"]
    if width & set(tables):
        lines += ["", "Width (docs/width.md):", ""]
        lines += [f"- {v}" for name in tables if name in width for v in tables[name][1]]
    precision = {s.name for s in STUDIES if s.precision}
    if precision & set(tables):
        lines += ["", "Precision (docs/precision.md):", ""]
        lines += [f"- {v}" for name in tables if name in precision for v in tables[name][1] if not _is_ordering(v)]
    lines += ["", "Wall time per study (start-up included, plots off) and the commit it ran at: "
              + ", ".join(f"{name} {tables[name][2]:.0f} s ({tables[name][3]})" for name in tables), ""]
    return "\n".join(lines)


def parse(text: str) -> Table:
    """The tables already written, study by study, so a partial run keeps the others' rows."""
    tables: Table = {}
    runs = {name: (wall, at) for name, wall, at in
            re.findall(r"(\w+) (\d+) s(?: \(([\w+]+)\))?", text.split("Wall time per study", 1)[-1])}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) == len(HEADER):
            name = cells[0].strip("`")
            wall, at = runs.get(name, (0, ""))
            tables.setdefault(name, ([], [], float(wall), at or "unknown"))[0].append(cells)
        elif line.startswith("- `"):
            name = line[3:].split("`")[0]
            if name in tables:
                tables[name][1].append(line[2:])
            elif name in {s.name for s in STUDIES if s.width}:  # a width study: lines only
                wall, at = runs.get(name, (0, ""))
                tables[name] = ([], [line[2:]], float(wall), at or "unknown")
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="studies to run (default: all)")
    parser.add_argument("--figures", action="store_true",
                        help="instead of the table: run each study as its command does, plots on, and copy its "
                             "comparison figure to docs/figures/NAME.png")
    parser.add_argument("--keep", type=Path, default=None, metavar="DIR",
                        help="write the sweeps under DIR and keep them (default: a temporary directory)")
    args = parser.parse_args()
    chosen = [s for s in STUDIES if not args.names or s.name in args.names]
    if unknown := set(args.names) - {s.name for s in STUDIES}:
        sys.exit(f"studies: unknown {sorted(unknown)}; choose from {[s.name for s in STUDIES]}")
    import torch

    path = RESULTS / f"studies_{'cuda' if torch.cuda.is_available() else 'cpu'}.md"
    tables = parse(path.read_text()) if path.exists() and args.names else {}
    if args.figures:
        with tempfile.TemporaryDirectory() as tmp:
            for study in chosen:
                print(f"studies: {study.name} (figures) ...", file=sys.stderr, flush=True)
                out = (args.keep or Path(tmp)) / study.name
                run_study(study, out, figures=True)
                shutil.copy(out / "plots" / f"{study.figure}.png", FIGURES / f"{study.name}.png")
                for more in sorted((out / "plots").glob(f"{study.figure}_*.png")):  # headline_2.png -> NAME_2.png
                    shutil.copy(more, FIGURES / f"{study.name}_{more.stem.rsplit('_', 1)[1]}.png")
        return
    at = commit()
    with tempfile.TemporaryDirectory() as tmp:
        for study in chosen:
            print(f"studies: {study.name} ...", file=sys.stderr, flush=True)
            df = run_study(study, (args.keep or Path(tmp)) / study.name)
            if study.width:
                tables[study.name] = ([], width_lines(study, df), df.attrs["wall_s"], at)
            else:
                lines = verdicts(study, df) + (precision_lines(study, df) if study.precision else [])
                tables[study.name] = (rows_of(study, df), lines, df.attrs["wall_s"], at)
    partial = [s.name for s in chosen] if args.names and set(tables) - set(args.names) else None
    text = render(tables, partial)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
