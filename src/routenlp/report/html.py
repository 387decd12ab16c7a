"""A self-contained single-file HTML report: tables plus plots embedded as base64 PNGs."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from routenlp.report.plots import cost_quality_plot, latency_cdf_plot, tier_share_plot

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1rem 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
tr.routenlp td{font-weight:bold;background:#eef6ff}
.note{color:#555;font-size:13px}
.ci{color:#666;font-size:11px}
.sig{color:#b00}
img{max-width:100%;border:1px solid #eee;margin:0.5rem 0}
"""


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _img(png: bytes | None, alt: str) -> str:
    if not png:
        return f'<p class="note">{html.escape(alt)}: not available.</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def top_shares(shares: dict[str, float], n: int = 3) -> str:
    top = sorted(shares.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{t} {s:.0%}" for t, s in top if s > 0)


def _ci(iv: Any) -> str:
    if not iv:
        return ""
    lo, hi = iv
    return f'<br><span class="ci">[{_fmt(lo)}, {"∞" if hi is None else _fmt(hi)}]</span>'


def _matched_cell(results: dict[str, Any], name: str, key: str) -> str:
    """The matched number, its 95% interval, and a mark when the difference to routenlp
    has an interval excluding zero (with that interval)."""
    val = _fmt(results["matched"].get(name, {}).get(key))
    iv = _ci(results.get("intervals", {}).get(name, {}).get(key))
    d = results.get("differences", {}).get(name, {}).get(key)
    mark = ""
    if d and d.get("excludes_zero"):
        lo, hi = d["ci"]
        mark = (f' <b class="sig" title="difference to routenlp: [{_fmt(lo)}, {_fmt(hi)}]">*</b>'
                f'<br><span class="ci">Δ [{_fmt(lo)}, {"∞" if hi is None else _fmt(hi)}]</span>')
    return f"{val}{mark}{iv}"


def systems_table(results: dict[str, Any]) -> str:
    head = (
        "<tr><th>system</th><th>points</th><th>quality ratio</th><th>cost ratio</th><th>mean quality</th>"
        "<th>p50 ms</th><th>p99 ms</th><th>SLA viol.</th><th>quality viol.</th>"
        "<th>escalation</th><th>cost @ q 0.97</th><th>quality @ c 0.16</th><th>AUC</th>"
        "<th>top tier shares</th></tr>"
    )
    body = []
    for name, s in results["systems"].items():
        cls = ' class="routenlp"' if name == "routenlp" else ""
        npts = results.get("n_points", {}).get(name, s.get("n_points") or len(s.get("curve") or []))
        body.append(
            f"<tr{cls}><td>{html.escape(name)}</td><td>{_fmt(npts)}</td><td>{_fmt(s['quality_ratio'])}</td>"
            f"<td>{_fmt(s['cost_ratio'])}</td><td>{_fmt(s['mean_quality'])}</td>"
            f"<td>{_fmt(s['p50_latency_ms'], 0)}</td><td>{_fmt(s['p99_latency_ms'], 0)}</td>"
            f"<td>{_fmt(s['sla_violation_rate'])}</td><td>{_fmt(s['quality_violation_rate'])}</td>"
            f"<td>{_fmt(s['escalation_rate'])}</td>"
            f"<td>{_matched_cell(results, name, 'cost_ratio_at_quality_0.97')}</td>"
            f"<td>{_matched_cell(results, name, 'quality_at_cost_0.16')}</td>"
            f"<td>{_fmt(results.get('auc', {}).get(name))}</td>"
            f"<td>{html.escape(top_shares(s['tier_shares']))}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def per_task_table(results: dict[str, Any], systems: tuple[str, ...] = ("routenlp", "oracle")) -> str:
    shown = [s for s in (*systems, results.get("reference", "")) if s in results["systems"]]
    if not shown:
        return ""
    tasks = sorted(results["systems"][shown[0]].get("per_task", {}))
    head = "<tr><th>task</th><th>n</th>" + "".join(
        f"<th>{html.escape(s)} quality</th><th>{html.escape(s)} cost/query</th>" for s in shown
    )
    head += "<th>routenlp escalation</th><th>routenlp quality viol.</th></tr>"
    rows = []
    for t in tasks:
        n = results["systems"][shown[0]]["per_task"][t].get("n")
        cells = [f"<td>{html.escape(t)}</td><td>{_fmt(n, 0)}</td>"]
        for s in shown:
            pt = results["systems"][s]["per_task"].get(t, {})
            cells.append(f"<td>{_fmt(pt.get('mean_quality'))}</td><td>{_fmt(pt.get('mean_cost'), 6)}</td>")
        rn = results["systems"].get("routenlp", {}).get("per_task", {}).get(t, {})
        cells.append(f"<td>{_fmt(rn.get('escalation_rate'))}</td><td>{_fmt(rn.get('quality_violation_rate'))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _boot_note(results: dict[str, Any]) -> str:
    b = results.get("bootstrap") or {}
    return f"({b.get('resamples')} resamples, seed {b.get('seed')})" if b else "(not computed)"


def render_html(results: dict[str, Any], *, title: str | None = None) -> str:
    """The report as one HTML string (no external files, no scripts)."""
    name = results.get("matrix") or "evaluation"
    title = title or f"RouteNLP evaluation: {name}"
    flags = results.get("flags", {})
    badges = []
    if flags.get("estimated_cost"):
        badges.append("estimated cost")
    if flags.get("modelled_latency"):
        badges.append("modelled latency")
    if not flags.get("latency_available", True):
        badges.append("no latency data")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in results.get("notes", []))
    desc = "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
        for k, v in results.get("descriptions", {}).items()
        if not k.startswith("always-")
    )
    cert = results.get("certificate") or {}
    cert_html = ""
    if cert:
        c = cert.get("certificate", {})
        cert_html = (
            f"<h2>Guarantee</h2><p><b>{html.escape(str(cert.get('plain', '')))}</b></p>"
            f"<p class=\"note\">served theta {html.escape(json.dumps(cert.get('theta')))}; alpha {_fmt(c.get('alpha'))}, "
            f"delta {_fmt(c.get('delta'))}, n_A {c.get('n_A')}, n_B {c.get('n_B')}, p-value {_fmt(c.get('p_value'))}, "
            f"upper confidence bound {_fmt(c.get('ucb'))}; {html.escape(str(c.get('population', '')))}</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{results.get('n_test')} test queries; ratios vs <b>{html.escape(str(results.get('reference')))}</b>
({html.escape(str(results.get('reference_mode')))}).
{(' <b>' + html.escape(', '.join(badges)) + '</b>.') if badges else ''}</p>
{cert_html}
<h2>Systems</h2>
{systems_table(results)}
<p class="note">Each system's curve is the upper convex hull of its (at most the same number of) operating
points: mixing two points at random achieves every hull point. cost @ q 0.97: least cost ratio on the hull
reaching quality ratio 0.97 (— = never); quality @ c 0.16: the hull's quality ratio at cost ratio 0.16; AUC:
area under the hull over cost ratio [0, 1]. Brackets: 95% paired-bootstrap interval over test queries
{html.escape(_boot_note(results))}; <b class="sig">*</b>: the difference to routenlp (Δ, its interval) excludes zero.</p>
<h2>Cost-quality curves</h2>
{_img(cost_quality_plot(results), 'cost-quality curves')}
<h2>Tier shares per task</h2>
{_img(tier_share_plot(results), 'tier shares per task')}
<h2>Latency</h2>
{_img(latency_cdf_plot(results), 'latency CDF')}
<h2>Per task</h2>
{per_task_table(results)}
<h2>Systems compared</h2><ul>{desc}</ul>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""


def write_html(results: dict[str, Any], path: str | Path, *, title: str | None = None) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(render_html(results, title=title), encoding="utf-8")
    return p
