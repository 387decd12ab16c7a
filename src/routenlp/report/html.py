"""The HTML report: evaluation tables and plots, plus (optionally) a plain-language summary,
the closed loop's rounds and the failure clusters, so one page tells the whole story.

`render_html` returns one self-contained string (plots as base64 data: URIs);
`write_html` also writes each plot as a PNG under `plots/` beside the HTML file and
references it by relative path, so the images can be reused on their own.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from routenlp.report.plots import cost_quality_plot, latency_cdf_plot, loop_rounds_plot, tier_share_plot

PLOTS_DIR = "plots"
# file stem -> alt text, in page order; write_html owns exactly these names under plots/
PLOT_FILES = {
    "cost_quality": "cost-quality curves",
    "tier_shares": "tier shares per task",
    "latency_cdf": "latency CDF",
    "loop_rounds": "cost and quality ratio per loop round",
}
ImageSink = Callable[[str, "bytes | None"], str]  # (plot stem, PNG or None) -> <img> or a note

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
.summary{font-size:15px;line-height:1.45;max-width:900px}
tr.rejected td{background:#fff1f0}
tr.stopped td{background:#f7f7f7;color:#555}
td.text,th.text{text-align:left;max-width:420px}
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


def _inline(stem: str, png: bytes | None) -> str:
    return _img(png, PLOT_FILES[stem])


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


NOT_RUN = '<p class="note">not run.</p>'


def _text(x: Any, limit: int | None = None) -> str:
    """Escaped free text (queries, reasons), cut to `limit` characters on one line."""
    t = " ".join(str(x).split())
    if limit is not None and len(t) > limit:
        t = t[: limit - 1].rstrip() + "…"
    return html.escape(t)


def summary_html(summary: str | None) -> str:
    """The plain-language paragraph(s) at the top; blank lines separate paragraphs."""
    if not summary or not summary.strip():
        return ""
    paras = [p for p in summary.strip().split("\n\n") if p.strip()]
    return "<h2>Summary</h2>" + "".join(f'<p class="summary">{_text(p)}</p>' for p in paras)


def _rounds(loop: dict[str, Any] | None) -> list[dict[str, Any]]:
    rounds = (loop or {}).get("rounds") if isinstance(loop, dict) else None
    return [r for r in rounds or [] if isinstance(r, dict)]


def _distilled(rec: dict[str, Any]) -> str:
    """Per tier: the examples it was trained on this round (or the new set's volume)."""
    parts = []
    for d in rec.get("distill") or []:
        if not isinstance(d, dict):
            continue
        extra = "" if d.get("status") == "trained" else f" ({d.get('status')})"
        parts.append(f"{d.get('tier')} {d.get('n_examples')}{extra}")
    if not parts and isinstance(rec.get("volume"), dict):
        parts = [f"{t} {n}" for t, n in sorted(rec["volume"].items())]
    return html.escape(", ".join(parts)) if parts else "—"


def loop_table(loop: dict[str, Any]) -> str:
    head = (
        "<tr><th>round</th><th>strategy</th><th>status</th><th>test quality ratio</th><th>test cost ratio</th>"
        "<th>cheap share</th><th>top share</th><th>cal quality ratio</th><th>cal cost ratio</th>"
        "<th>examples distilled</th><th>seconds</th><th class=\"text\">reason</th></tr>"
    )
    body = []
    for r in _rounds(loop):
        status = str(r.get("status") or "")
        cls = f' class="{html.escape(status)}"' if status in ("rejected", "stopped") else ""
        cal = r.get("cal") if isinstance(r.get("cal"), dict) else {}
        secs = r.get("seconds") if isinstance(r.get("seconds"), dict) else {}
        why = "; ".join(str(x) for x in (r.get("reason"), r.get("stop")) if x)
        body.append(
            f"<tr{cls}><td>{_fmt(r.get('round'))}</td><td>{_fmt(r.get('strategy'))}</td>"
            f"<td>{html.escape(status) or '—'}</td><td>{_fmt(r.get('quality_ratio'))}</td>"
            f"<td>{_fmt(r.get('cost_ratio'))}</td><td>{_fmt(r.get('cheap_share'))}</td>"
            f"<td>{_fmt(r.get('top_share'))}</td><td>{_fmt(cal.get('quality_ratio'))}</td>"
            f"<td>{_fmt(cal.get('cost_ratio'))}</td><td>{_distilled(r)}</td>"
            f"<td>{_fmt(secs.get('total'), 1)}</td><td class=\"text\">{_text(why) if why else ''}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


CHANGE_ROWS = (
    ("cost_ratio_at_quality_0.97", "cost ratio at quality ratio 0.97"),
    ("quality_at_cost_0.16", "quality ratio at cost ratio 0.16"),
    ("cost_ratio", "cost ratio (default point)"),
    ("quality_ratio", "quality ratio (default point)"),
)


def change_html(change: dict[str, Any] | None) -> str:
    """What the loop's rounds changed for one system, each paired against the same before
    over the same test queries (`results["loop_change"]`, written by the demo): the
    promoted round and, in `rounds`, the ablation beside it."""
    if not isinstance(change, dict) or not isinstance(change.get("metrics"), dict):
        return ""
    rounds = [r for r in change.get("rounds") or [] if isinstance(r, dict) and isinstance(r.get("metrics"), dict)]
    if not rounds:
        rounds = [{"strategy": "promoted", "round": "", "metrics": change["metrics"]}]
    head = "".join(
        f"<th>{html.escape(str(r.get('strategy')))} round {_fmt(r.get('round'))}"
        f"{' (promoted)' if r.get('promoted') else ''}: after</th><th>change [95% CI]</th>" for r in rounds)
    rows = []
    for key, label in CHANGE_ROWS:
        ms = [r["metrics"].get(key) for r in rounds]
        if not any(isinstance(m, dict) for m in ms):
            continue
        before = next(m.get("before") for m in ms if isinstance(m, dict))
        cells = ""
        for m in ms:
            if not isinstance(m, dict):
                cells += "<td>—</td><td>—</td>"
                continue
            ci = m.get("ci") or [None, None]
            sig = ' <b class="sig">*</b>' if m.get("excludes_zero") else ""
            cells += f"<td>{_fmt(m.get('after'))}</td><td>{_fmt(m.get('diff'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]{sig}</td>"
        rows.append(f"<tr><td class=\"text\">{html.escape(label)}</td><td>{_fmt(before)}</td>{cells}</tr>")
    if not rows:
        return ""
    return (
        f"<h3>What the rounds changed for {html.escape(str(change.get('system', 'routenlp')))}</h3>"
        f"<table><tr><th class=\"text\">number</th><th>before</th>{head}</tr>"
        f"{''.join(rows)}</table>"
        f'<p class="note">Paired over the same {_fmt(change.get("n_test"))} test queries (change = after - before; '
        f'{_fmt(change.get("paired_resamples"))} bootstrap resamples); <b class="sig">*</b>: the interval of the '
        "change excludes zero; — the curve never reaches that point. The promoted round is served; the others "
        "are the ablation, evaluated the same way.</p>"
    )


def loop_html(loop: dict[str, Any] | None, img: ImageSink, change: dict[str, Any] | None = None) -> str:
    """The closed loop's rounds: a table (rejected/stopped rounds with their reason) and
    the test cost/quality ratio per round and strategy."""
    if not _rounds(loop):
        return f"<h2>Closed loop</h2>{NOT_RUN}"
    assert loop is not None
    bar = loop.get("target_quality")
    return (
        "<h2>Closed loop</h2>"
        f'<p class="note">Primary (served) strategy: <b>{_fmt(loop.get("primary"))}</b>; a round is accepted '
        f"when its calibration-split quality ratio reaches {_fmt(bar, 4)}. Test columns: the round's policy on "
        "the held-out test split; cheap share: traffic not sent to the top tier. Round 0 is the baseline every "
        "strategy starts from.</p>"
        f"{loop_table(loop)}"
        f"{change_html(change)}"
        f"{img('loop_rounds', loop_rounds_plot(loop))}"
    )


def _gains_by_cluster(gains: Sequence[dict[str, Any]] | None) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for g in gains or []:
        if isinstance(g, dict) and g.get("cluster") is not None:
            out.setdefault(str(g["cluster"]), []).append(g)
    return out


def _gain_cell(gs: list[dict[str, Any]]) -> str:
    if not gs:
        return "—"
    parts = []
    for g in gs:
        qb, qa = g.get("quality_before"), g.get("quality_after")
        delta = f" ({qa - qb:+.3f})" if isinstance(qa, (int, float)) and isinstance(qb, (int, float)) else ""
        parts.append(f"{_fmt(g.get('tier'))}: {_fmt(qb)} → {_fmt(qa)}{delta}, n {_fmt(g.get('n_test'))}")
    return "<br>".join(parts)


def clusters_html(clusters: dict[str, Any] | None, gains: Sequence[dict[str, Any]] | None = None,
                  *, top: int = 10, examples: int = 3, example_chars: int = 90) -> str:
    """The top failure clusters (a ClusterReport's JSON) with, when `gains` (the same
    round's record `gains`) is given, each cluster's test quality before/after distilling."""
    items = (clusters or {}).get("clusters") if isinstance(clusters, dict) else None
    items = [c for c in items or [] if isinstance(c, dict)]
    if not items:
        return f"<h2>Failure clusters</h2>{NOT_RUN}"
    assert clusters is not None
    n_fail = clusters.get("n_failures") or sum(int(c.get("size") or 0) for c in items)
    by_key = _gains_by_cluster(gains)
    head = (
        "<tr><th>rank</th><th>task</th><th>failing tiers</th><th>size</th><th>share of failures</th>"
        "<th>mean gap</th><th>gap x top cost</th><th class=\"text\">example queries</th>"
        "<th>test quality before → after</th></tr>"
    )
    body = []
    for c in items[:top]:
        size = c.get("size")
        share = size / n_fail if isinstance(size, (int, float)) and n_fail else None
        tiers = c.get("failing_tiers") if isinstance(c.get("failing_tiers"), dict) else {}
        ex = "<br>".join(_text(e, example_chars) for e in (c.get("examples") or [])[:examples])
        key = str(c.get("key") or f"{c.get('task')}#{c.get('index', '')}")
        body.append(
            f"<tr><td>{_fmt(c.get('rank'))}</td><td>{_fmt(c.get('task'))}</td>"
            f"<td>{html.escape(', '.join(f'{t} {n}' for t, n in tiers.items())) or '—'}</td>"
            f"<td>{_fmt(size)}</td><td>{'—' if share is None else f'{share:.1%}'}</td>"
            f"<td>{_fmt(c.get('mean_gap'))}</td><td>{_fmt(c.get('spend'))}</td>"
            f"<td class=\"text\">{ex or '—'}</td>"
            f"<td>{_gain_cell(by_key.get(key, []))}</td></tr>"
        )
    ranking = ("the sum of gap x the top tier's cost on each member (the spend the cluster keeps on the "
               "top tier)" if clusters.get("priority") == "spend" else "size x mean gap to the top tier")
    gain_note = ("" if by_key else " No per-cluster gains given (the loop did not distil this round, or they "
                 "were not passed).")
    return (
        "<h2>Failure clusters</h2>"
        f'<p class="note">Top {min(top, len(items))} of {len(items)} clusters of {_fmt(n_fail)} mined failures, '
        f"ranked by {ranking} (the distillation priority). Failing tiers: how many of the "
        f"cluster's queries each tier failed.{gain_note}</p>"
        f"<table>{head}{''.join(body)}</table>"
    )


def _page(results: dict[str, Any], img: ImageSink, *, title: str | None, summary: str | None,
          loop: dict[str, Any] | None, clusters: dict[str, Any] | None,
          gains: Sequence[dict[str, Any]] | None) -> str:
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
{summary_html(summary)}
<p>{_fmt(results.get('n_test'))} test queries; ratios vs <b>{html.escape(str(results.get('reference')))}</b>
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
{img('cost_quality', cost_quality_plot(results))}
<h2>Tier shares per task</h2>
{img('tier_shares', tier_share_plot(results))}
<h2>Latency</h2>
{img('latency_cdf', latency_cdf_plot(results))}
<h2>Per task</h2>
{per_task_table(results)}
{loop_html(loop, img, results.get('loop_change'))}
{clusters_html(clusters, gains)}
<h2>Systems compared</h2><ul>{desc}</ul>
<h2>Notes</h2><ul>{notes}</ul>
</body></html>
"""


def render_html(results: dict[str, Any], *, title: str | None = None, summary: str | None = None,
                loop: dict[str, Any] | None = None, clusters: dict[str, Any] | None = None,
                gains: Sequence[dict[str, Any]] | None = None) -> str:
    """The report as one HTML string (plots inlined as data: URIs, no scripts), so it
    can be sent or stored as a single file.

    `loop` is the loop.json document, `clusters` one round's clusters.json (a ClusterReport)
    and `gains` that round's record `gains`; absent sections read "not run"."""
    return _page(results, _inline, title=title, summary=summary, loop=loop, clusters=clusters, gains=gains)


def write_html(results: dict[str, Any], path: str | Path, *, title: str | None = None, summary: str | None = None,
               loop: dict[str, Any] | None = None, clusters: dict[str, Any] | None = None,
               gains: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write the report to `path` and each plot to `plots/<name>.png` beside it (referenced
    by relative path, so the images are reusable). A plot this report does not have is
    removed from plots/ so that no stale image from an earlier run is left behind."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    plots = p.parent / PLOTS_DIR
    written: set[str] = set()

    def to_file(stem: str, png: bytes | None) -> str:
        if not png:
            return _img(None, PLOT_FILES[stem])
        plots.mkdir(exist_ok=True)
        (plots / f"{stem}.png").write_bytes(png)
        written.add(stem)
        return f'<img alt="{html.escape(PLOT_FILES[stem])}" src="{PLOTS_DIR}/{stem}.png">'

    page = _page(results, to_file, title=title, summary=summary, loop=loop, clusters=clusters, gains=gains)
    for stem in PLOT_FILES.keys() - written:
        (plots / f"{stem}.png").unlink(missing_ok=True)
    p.write_text(page, encoding="utf-8")
    return p


class _ImgSources(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.src += [v for k, v in attrs if k == "src" and v]


def referenced_images(html_path: str | Path) -> list[Path]:
    """The image files an HTML report's <img src> points at, resolved against its folder
    (data: and http(s): sources are not files and are left out) - to check a written
    report references every plot it ships, and nothing missing."""
    p = Path(html_path)
    parser = _ImgSources()
    parser.feed(p.read_text(encoding="utf-8"))
    return [p.parent / s for s in parser.src if not s.startswith(("data:", "http:", "https:", "file:"))]
