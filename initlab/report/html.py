"""`report.html`: a run or a sweep as one self-contained file that opens from file:// with
no network and no scripts from elsewhere. The figures are embedded as images (PNG and SVG as
base64 data URIs: nothing from the directory runs in the browser), every name is escaped, the
tables are HTML; nothing is re-computed: it reads what the run wrote."""

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from initlab.rundir.layout import REPORT_FILE, SUMMARY_FILE, SWEEP_FILE, RunLayout, SweepLayout
from initlab.rundir.safe import inside, write_text
from initlab.rundir.store import read_metadata

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}
th{background:#f4f4f4}.status{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;background:#888}
.ok{background:#2a7d2a}.diverged{background:#b8860b}.failed,.interrupted,.incomplete{background:#b22222}
figure{margin:1em 0}figure img,figure svg{max-width:100%;height:auto;border:1px solid #eee}
figcaption{color:#555;font-size:12px}pre{background:#f8f8f8;padding:1em;overflow:auto;font-size:12px}
"""
# Says, once the page has loaded, whether every embedded figure decoded: what a browser test reads.
SORT = """<script>
// Click a column's header to sort the jobs by it (again: the other way); #sort=COLUMN in the
// address sorts on load (#sort=COLUMN:desc descending).
function sortBy(table, col, desc) {
  var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
  var key = function (r) { var t = r.cells[col].textContent.trim(), n = parseFloat(t);
                           return isNaN(n) ? t : n; };
  rows.sort(function (a, b) {
    var x = key(a), y = key(b), c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
                                                            : (typeof x === "number" ? -1 : 1);
    return desc ? -c : c; });
  rows.forEach(function (r) { body.appendChild(r); });
  table.setAttribute("data-sorted", table.tHead.rows[0].cells[col].textContent + (desc ? ":desc" : ""));
}
document.querySelectorAll("table.jobs").forEach(function (table) {
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    th.style.cursor = "pointer";
    th.addEventListener("click", function () {
      sortBy(table, i, table.getAttribute("data-sorted") === th.textContent); });
  });
  var m = /sort=([^:&]+)(:desc)?/.exec(decodeURIComponent(location.hash));
  if (m) { Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
    if (th.textContent === m[1]) sortBy(table, i, !!m[2]); }); }
});
</script>"""
CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-figures", imgs.length);
  document.body.setAttribute("data-figures-ok", ok ? "yes" : "no");
});
</script>"""


MIME = {".png": "image/png", ".svg": "image/svg+xml", ".pdf": "application/pdf"}


def _figure(path: Path) -> str:
    """A figure as an image from a data URI: an SVG's scripts do not run in an <img>, and every
    file name is escaped (plots/ may come from anyone)."""
    caption = html.escape(path.stem.replace("_", " "))
    src = f"data:{MIME[path.suffix]};base64,{base64.b64encode(path.read_bytes()).decode()}"
    if path.suffix == ".pdf":
        name = html.escape(path.name)
        return f'<p><a download="{name}" href="{src}">{name}</a></p>'
    return f'<figure><img alt="{caption}" src="{src}"><figcaption>{caption}</figcaption></figure>'


ORDER = ["step0_std", "metrics", "telemetry", "grad_flow", "dead", "update_ratio", "probe", "act_hist_image",
         "hist_first_last", "grid_final_loss", "loss_curves", "step0_std_overlay"]  # the story first


def _figures(plots: Path) -> str:
    files = [p for p in plots.glob("*") if p.suffix in (".png", ".svg", ".pdf")] if plots.is_dir() else []
    files.sort(key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.name))
    return "\n".join(_figure(p) for p in files) or "<p>No figures: the run was made with plots=false " \
        "(<code>initlab-report DIR</code> draws them).</p>"


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
    return f"<table>{cells}</table>"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _page(title: str, status: str, sections: list[tuple[str, str]], script: str = "") -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    badge = f'<span class="status {html.escape(status)}">{html.escape(status)}</span>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)} {badge}</h1>\n{body}\n{script}{CHECK}"
            "</body></html>\n")


def run_html(run_dir: Path) -> str:
    summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).exists() else {}
    final = {k: v for k, v in (summary.get("final") or {}).items() if v is not None}
    about = {"status": summary.get("status", "unknown"), "steps": summary.get("steps_done"),
             "device": summary.get("device"), "params": summary.get("params"), **final}
    if summary.get("diverged"):
        about["diverged"] = ", ".join(f"{k}={v}" for k, v in summary["diverged"].items() if v is not None)
    if summary.get("error"):
        about["error"] = summary["error"]
    if summary.get("overrides"):
        about["overrides"] = " ".join(summary["overrides"])
    flags = summary.get("flags") or []
    flag_html = ("<table><tr><th>flag</th><th>what it means</th></tr>" + "".join(
        f"<tr><td>{html.escape(f['flag'])}</td><td>{html.escape(f['detail'])}</td></tr>" for f in flags)
        + "</table>") if flags else "<p>No flags: activations and gradients keep their scale, no dead layers.</p>"
    config = summary.get("config") or read_metadata(run_dir).get("config") or {}  # a CLI run's: in its parquet files
    sections = [("Run", _table(about)), ("Diagnosis", flag_html), ("Figures", _figures(RunLayout(run_dir).plots)),
                ("Step 0, per layer", _step0_table(run_dir)), ("Init", _init_table(summary.get("init") or [])),
                ("Files", _files(run_dir)), ("Timings", _table(summary.get("timings") or {}))]
    if config:
        sections.append(("Config", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"))
    named = " ".join(summary.get("overrides") or []) or run_dir.name  # a sweep's job: what it ran, not "0"
    return _page(f"initlab run {named}", str(about["status"]), sections)


def _step0_table(run_dir: Path) -> str:
    """Activation and gradient statistics of every tracked layer at step 0."""
    from initlab.rundir.store import read_stats

    try:
        stats = read_stats(run_dir)
    except Exception as exc:  # an unreadable table is said, the rest of the page stays
        return f"<p>stats.parquet could not be read: {html.escape(str(exc))}</p>"
    if stats.empty:
        return "<p>No statistics recorded.</p>"
    s0 = stats[(stats["step"] == stats["step"].min()) & stats["kind"].isin(["act", "grad"])]
    wide = s0.pivot_table(index=["layer_idx", "layer", "module_type"], columns="kind", values=["std", "mean"],
                          aggfunc="first", dropna=False)
    wide.columns = [f"{kind} {stat}" for stat, kind in wide.columns]
    wide = wide.reset_index().drop(columns="layer_idx")
    return wide.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)


def _init_table(report: list[dict[str, Any]]) -> str:
    if not report:
        return "<p>No init report (a run through watch() on the user's own model).</p>"
    return pd.DataFrame(report).to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)


def _files(run_dir: Path) -> str:
    """Links to what the run wrote, relative: they work wherever the folder is copied."""
    names = [p.name for p in sorted(run_dir.iterdir()) if p.suffix in (".parquet", ".json", ".log")]
    return "<ul>" + "".join(f'<li><a href="{html.escape(n)}">{html.escape(n)}</a></li>' for n in names) + "</ul>"


def sweep_html(sweep_dir: Path, table: pd.DataFrame) -> str:
    from initlab.rundir.sweep_table import swept_factors

    factors = [c for c in swept_factors(table) if c in table]
    rest = [c for c in table.columns if c not in ("path", "error", *factors) and not c.startswith("flag_")
            and not (table[c].isna() | table[c].astype(str).isin(["None", "nan", ""])).all()]  # all-empty: hidden
    cols = ["job", *factors, *[c for c in rest if c != "job"]]  # what was swept first, where it shows
    failed = int((~table["status"].isin(["ok", "diverged"])).sum())
    status = "ok" if not failed else "failed"
    summary = {"jobs": len(table), "failed": failed, "diverged": int((table["status"] == "diverged").sum())}
    jobs = table[cols].copy()
    for col in [c for c in jobs.columns if not pd.api.types.is_numeric_dtype(jobs[c])]:  # only `report` is HTML
        jobs[col] = jobs[col].map(lambda v: html.escape(str(v)) if v is not None else v)
    jobs["report"] = [f'<a href="{html.escape(p)}/{REPORT_FILE}">{html.escape(p)}</a>'
                      if (d := inside(sweep_dir, p)) is not None and (d / REPORT_FILE).exists() else html.escape(p)
                      for p in table["path"]]
    jobs_html = jobs.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0, escape=False,
                             classes="jobs")
    sections = [("Sweep", _table(summary)), ("Jobs (click a column to sort)", jobs_html),
                ("Figures", _figures(SweepLayout(sweep_dir).plots))]
    return _page(f"initlab sweep {sweep_dir.parent.name}/{sweep_dir.name}", status, sections, SORT)


def write_html(path: Path) -> Path:
    """report.html for a run directory or a sweep directory (its sweep.parquet and plots)."""
    from initlab.rundir.sweep_table import is_sweep_dir, sweep_table

    if is_sweep_dir(path):
        table = pd.read_parquet(path / SWEEP_FILE) if (path / SWEEP_FILE).exists() else sweep_table(path)
        for job in table["path"]:  # each job's own page, linked from the table; never outside the sweep
            job_dir = inside(path, str(job))
            if job_dir is not None and (job_dir / SUMMARY_FILE).exists():
                write_html(job_dir)
        text = sweep_html(path, table)
    else:
        text = run_html(path)
    out = path / REPORT_FILE
    write_text(out, text)
    return out
