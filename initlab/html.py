"""`report.html`: a run or a sweep as one self-contained file that opens from file:// with
no network and no scripts from elsewhere. The figures are embedded (PNG as base64, SVG
inline), the tables are HTML; nothing is re-computed: it reads what the run wrote."""

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

from initlab.store import SUMMARY_FILE

REPORT_FILE = "report.html"
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
CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });
  document.body.setAttribute("data-figures", imgs.length + document.querySelectorAll("figure svg").length);
  document.body.setAttribute("data-figures-ok", ok ? "yes" : "no");
});
</script>"""


def _figure(path: Path) -> str:
    caption = html.escape(path.stem.replace("_", " "))
    if path.suffix == ".svg":
        svg = path.read_text()
        body = svg[svg.index("<svg"):]  # inline, without the XML prolog
    else:
        mime = "application/pdf" if path.suffix == ".pdf" else "image/png"
        data = base64.b64encode(path.read_bytes()).decode()
        if path.suffix == ".pdf":
            return f'<p><a download="{path.name}" href="data:{mime};base64,{data}">{path.name}</a></p>'
        body = f'<img alt="{caption}" src="data:{mime};base64,{data}">'
    return f"<figure>{body}<figcaption>{caption}</figcaption></figure>"


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


def _page(title: str, status: str, sections: list[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    badge = f'<span class="status {html.escape(status)}">{html.escape(status)}</span>'
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)} {badge}</h1>\n{body}\n{CHECK}"
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
    flags = summary.get("flags") or []
    flag_html = ("<table><tr><th>flag</th><th>what it means</th></tr>" + "".join(
        f"<tr><td>{html.escape(f['flag'])}</td><td>{html.escape(f['detail'])}</td></tr>" for f in flags)
        + "</table>") if flags else "<p>No flags: activations and gradients keep their scale, no dead layers.</p>"
    config = summary.get("config") or {}
    sections = [("Run", _table(about)), ("Diagnosis", flag_html), ("Figures", _figures(run_dir / "plots")),
                ("Timings", _table(summary.get("timings") or {}))]
    if config:
        sections.append(("Config", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"))
    return _page(f"initlab run {run_dir.name}", str(about["status"]), sections)


def sweep_html(sweep_dir: Path, table: pd.DataFrame) -> str:
    cols = [c for c in table.columns if c not in ("path", "error") and not c.startswith("flag_")]
    failed = int((~table["status"].isin(["ok", "diverged"])).sum())
    status = "ok" if not failed else "failed"
    summary = {"jobs": len(table), "failed": failed, "diverged": int((table["status"] == "diverged").sum())}
    sections = [("Sweep", _table(summary)),
                ("Jobs", table[cols].to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)),
                ("Figures", _figures(sweep_dir / "plots"))]
    return _page(f"initlab sweep {sweep_dir.parent.name}/{sweep_dir.name}", status, sections)


def write_html(path: Path) -> Path:
    """report.html for a run directory or a sweep directory (its sweep.parquet and plots)."""
    from initlab.sweep import SWEEP_FILE, is_sweep_dir, sweep_table

    if is_sweep_dir(path):
        table = pd.read_parquet(path / SWEEP_FILE) if (path / SWEEP_FILE).exists() else sweep_table(path)
        text = sweep_html(path, table)
    else:
        text = run_html(path)
    out = path / REPORT_FILE
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return out
