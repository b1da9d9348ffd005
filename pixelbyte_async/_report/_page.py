"""
The report page: one self-contained HTML file (inline CSS and JS, no network).

It opens from ``file://`` and links only files in its own folder (outputs and
posters by name); a Content-Security-Policy forbids anything else, so a prompt
that slipped through escaping still could not load or send a thing.  Light and
dark follow the reader's system setting.
"""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape
from urllib.parse import quote

from pixelbyte_async._inputs import usd

from ._charts import concurrency_chart, spend_chart, timeline_chart
from ._data import ReportData, ReportRow


__all__ = ["render"]

_GROUPS = (
    ("done", "Done"),
    ("failed", "Failed"),
    ("waiting", "Waiting"),
    ("attention", "Needs attention"),
    ("skipped", "Skipped"),
)

_CSP = (
    "default-src 'none'; img-src 'self' file: data:; media-src 'self' file:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; base-uri 'none'; "
    "form-action 'none'"
)

_CSS = """
:root { color-scheme: light dark;
  --bg: #f7f7f8; --fg: #1c1c21; --muted: #5d5d69; --card: #ffffff; --line: #d9d9e0;
  --done: #1f7a4d; --failed: #b3261e; --waiting: #8a6d00; --attention: #a4508b;
  --queued: #b9c3d6; --accent: #2f5fb3; }
@media (prefers-color-scheme: dark) { :root {
  --bg: #15161a; --fg: #e8e8ee; --muted: #a3a3b2; --card: #1f2026; --line: #34353f;
  --done: #4cc38a; --failed: #ff7a6e; --waiting: #e2c044; --attention: #e38bd0;
  --queued: #4a5570; --accent: #7ea6f6; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header, main, footer { max-width: 1200px; margin: 0 auto; padding: 0 20px; }
header { padding-top: 24px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 28px 0 10px; }
.sub, footer { color: var(--muted); }
footer { padding-bottom: 32px; font-size: .85rem; }
.totals { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr));
  gap: 10px; margin: 0; }
.stat { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; }
.stat dt { color: var(--muted); font-size: .85rem; }
.stat dd { margin: 2px 0 0; font-size: 1.35rem; font-weight: 600; }
.stat.done dd { color: var(--done); } .stat.failed dd { color: var(--failed); }
.stat.waiting dd { color: var(--waiting); }
.stat.attention dd { color: var(--attention); }
.meter { height: 8px; background: var(--line); border-radius: 4px; margin-top: 6px;
  overflow: hidden; }
.meter span { display: block; height: 100%; background: var(--accent); }
.meter.over span { background: var(--failed); }
.note { background: var(--card); border-left: 4px solid var(--waiting);
  padding: 8px 12px; margin: 12px 0; }
.chart { width: 100%; height: auto; background: var(--card);
  border: 1px solid var(--line); border-radius: 8px; }
.chart .axis { stroke: var(--muted); } .chart .grid { stroke: var(--line); }
.chart .label { fill: var(--muted); font-size: 11px; }
.chart .line { fill: none; stroke: var(--accent); stroke-width: 2; }
.chart .line.spend { stroke: var(--done); }
.chart .budget { stroke: var(--failed); stroke-dasharray: 6 4; }
.chart .budget-label { fill: var(--failed); }
.chart .queued { fill: var(--queued); }
.chart .done .run { fill: var(--done); } .chart .failed .run { fill: var(--failed); }
.chart .waiting .run { fill: var(--waiting); }
.chart .attention .run { fill: var(--attention); }
.chart .open .run { fill-opacity: .45; }
.legend { display: flex; flex-wrap: wrap; gap: 14px; color: var(--muted);
  font-size: .85rem; margin: 6px 0 0; padding: 0; list-style: none; }
.legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin-right: 5px; vertical-align: -1px; }
.filters { display: flex; flex-wrap: wrap; gap: 8px; margin-bottom: 12px; }
.filters button { font: inherit; color: var(--fg); background: var(--card);
  border: 1px solid var(--line); border-radius: 16px; padding: 4px 12px;
  cursor: pointer; }
.filters button[aria-pressed="true"] { border-color: var(--accent);
  box-shadow: inset 0 0 0 1px var(--accent); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(240px, 1fr));
  gap: 14px; list-style: none; padding: 0; margin: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  overflow: hidden; display: flex; flex-direction: column; }
.card[hidden] { display: none; }
.card .poster, .card .noposter { width: 100%; aspect-ratio: 16 / 9; display: block;
  object-fit: cover; background: var(--line); }
.card .noposter { display: grid; place-items: center; color: var(--muted);
  font-size: .9rem; }
.card .body { padding: 10px 12px 12px; display: flex; flex-direction: column;
  gap: 4px; }
.card h3 { font-size: 1rem; margin: 0; word-break: break-all; }
.badge { align-self: flex-start; font-size: .75rem; font-weight: 600;
  padding: 1px 8px; border-radius: 10px; color: var(--card); }
.badge.done { background: var(--done); } .badge.failed { background: var(--failed); }
.badge.waiting { background: var(--waiting); }
.badge.attention { background: var(--attention); }
.badge.skipped { background: var(--muted); }
.prompt { margin: 0; display: -webkit-box; -webkit-line-clamp: 3;
  -webkit-box-orient: vertical; overflow: hidden; }
.facts { color: var(--muted); font-size: .85rem; margin: 0; }
.error { color: var(--failed); font-size: .85rem; margin: 0; word-break: break-word; }
details summary { cursor: pointer; color: var(--accent); font-size: .9rem; }
video { width: 100%; margin-top: 6px; border-radius: 4px; background: #000; }
a { color: var(--accent); }
"""

_JS = """
(function () {
  var buttons = document.querySelectorAll('.filters button');
  var cards = document.querySelectorAll('.card');
  buttons.forEach(function (button) {
    button.addEventListener('click', function () {
      var group = button.getAttribute('data-filter');
      buttons.forEach(function (b) {
        b.setAttribute('aria-pressed', b === button ? 'true' : 'false');
      });
      cards.forEach(function (card) {
        card.hidden = group !== 'all' && card.getAttribute('data-group') !== group;
      });
    });
  });
  document.querySelectorAll('img.poster').forEach(function (img) {
    function broken() {
      var box = document.createElement('div');
      box.className = 'noposter';
      box.setAttribute('role', 'img');
      box.setAttribute('aria-label', img.alt);
      box.textContent = 'no picture';
      img.replaceWith(box);
    }
    if (img.complete && img.naturalWidth === 0) { broken(); }
    else { img.addEventListener('error', broken); }
  });
})();
"""


def _when(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float) -> str:
    if value < 120:  # noqa: PLR2004 -- readable up to two minutes
        return f"{value:.1f} s"
    minutes, seconds = divmod(round(value), 60)
    if minutes < 120:  # noqa: PLR2004
        return f"{minutes} min {seconds:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _stat(label: str, value: str, css: str = "", extra: str = "") -> str:
    return (
        f'<div class="stat {css}"><dt>{escape(label)}</dt>'
        f"<dd>{escape(value)}</dd>{extra}</div>"
    )


def _totals(data: ReportData) -> str:
    parts = [
        _stat(label, f"{data.count(g):,}", g)
        for g, label in _GROUPS
        if g != "skipped" or data.count(g)
    ]
    parts.append(_stat("Rows", f"{len(data.rows):,}"))
    confirmed, assumed = data.confirmed_micro_cents, data.assumed_micro_cents
    budget = data.budget_micro_cents
    parts.append(_stat("Spend (charged)", usd(confirmed)))
    parts.append(_stat("Spend (estimated)", usd(assumed)))
    if budget is not None:
        spent = confirmed + assumed
        share = min(1.0, spent / budget) if budget else 1.0
        over = " over" if spent > budget else ""
        meter = (
            f'<div class="meter{over}" role="meter" aria-valuemin="0" '
            f'aria-valuemax="{budget}" aria-valuenow="{spent}" '
            f'aria-label="spend against the budget">'
            f'<span style="width:{share * 100:.1f}%"></span></div>'
        )
        parts.append(_stat("Budget", usd(budget), extra=meter))
    if data.runs:
        parts.append(_stat("Wall time", _seconds(data.wall_seconds)))
        clock = data.clock_seconds
        if abs(clock - data.wall_seconds) > 1:
            # A virtual clock (--sandbox): its seconds are said as such.
            parts.append(_stat("Sandbox time", _seconds(clock)))
        parts.append(_stat("Runs", f"{len(data.runs):,}"))
    notes = []
    last = data.runs[-1] if data.runs else None
    if last is not None and last.interrupted:
        notes.append(
            "The last run was interrupted: run the batch again to finish the "
            "waiting rows (jobs already submitted are re-attached, not paid again)."
        )
    if last is not None and last.stop_reason:
        notes.append(f"The last run stopped submitting early: {last.stop_reason}.")
    if data.count("attention"):
        notes.append(
            "Rows that need attention have a submit whose fate is unknown: settle "
            "them with 'pixelbyte-async batch resolve'."
        )
    return (
        '<section aria-labelledby="totals-h"><h2 id="totals-h">Totals</h2>'
        f'<dl class="totals">{"".join(parts)}</dl>'
        + "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
        + "</section>"
    )


def _charts(data: ReportData) -> str:
    timeline = timeline_chart(data.rows)
    if timeline is None:
        return ""
    legend = "".join(
        f'<li><i style="background:var(--{css})"></i>{label}</li>'
        for css, label in (
            ("queued", "waiting in the queue"),
            ("done", "processing → done"),
            ("failed", "failed or cancelled"),
            ("waiting", "not finished"),
        )
    )
    concurrency = concurrency_chart(data.rows) or ""
    spend = spend_chart(data.rows, data.budget_micro_cents) or ""
    return (
        '<section aria-labelledby="charts-h"><h2 id="charts-h">Charts</h2>'
        "<p class=sub>Seconds since the first submit, by the client's clock "
        "(the sandbox's under --sandbox).</p>"
        f'<h3>Timeline</h3>{timeline}<ul class="legend">{legend}</ul>'
        f"<h3>Jobs in flight</h3>{concurrency}"
        f"<h3>Spend</h3>{spend}</section>"
    )


#: Posters past this many cards load as they scroll into view (a big batch's page
#: opens without reading thousands of images first).
_EAGER_POSTERS = 120


def _picture(row: ReportRow, key: str, what: str, index: int) -> str:
    if row.poster is not None:
        lazy = ' loading="lazy"' if index >= _EAGER_POSTERS else ""
        return (
            f'<img class="poster" src="{escape(quote(row.poster))}" '
            f'alt="Poster of {key}: {what}" width="320" height="180"{lazy}>'
        )
    shown = "skipped" if row.group == "skipped" else row.state.replace("_", " ")
    return (
        f'<div class="noposter" role="img" aria-label="No picture for {key} '
        f'({escape(shown)})">{escape(shown)}</div>'
    )


def _facts(row: ReportRow) -> str:
    facts = []
    if row.duration is not None:
        facts.append(f"{row.duration:g} s")
    if row.cost_micro_cents is not None and row.job_id is not None:
        cost = usd(row.cost_micro_cents)
        if row.group == "failed":
            cost += " refunded"
        elif not row.cost_known:
            cost += " (estimate)"
        facts.append(cost)
    if row.submitted_at is not None and row.ended_at is not None:
        facts.append(f"{_seconds(row.ended_at - row.submitted_at)} to finish")
    if row.attempts > 1:
        facts.append(f"{row.attempts} attempts")
    return f'<p class="facts">{escape(" · ".join(facts))}</p>'


def _video(row: ReportRow, key: str) -> str:
    if row.video is None:
        return ""
    src = escape(quote(row.video))
    poster = "" if row.poster is None else f' poster="{escape(quote(row.poster))}"'
    return (
        f"<details><summary>Play {key}</summary>"
        f'<video controls preload="none"{poster} src="{src}" '
        f'aria-label="Video of {key}"></video>'
        f'<a href="{src}">{escape(row.video)}</a></details>'
    )


def _card(row: ReportRow, index: int) -> str:
    group = row.group
    key = escape(row.key)
    what = escape(row.prompt or row.key)
    status = row.job_status if row.state in {"completed", "downloaded"} else row.state
    if group == "skipped":
        status = f"skipped: {row.skipped}"
    body = [
        f"<h3>{key}</h3>",
        f'<span class="badge {group}">{escape(status or row.state)}</span>',
    ]
    if row.prompt:
        body.append(f'<p class="prompt" title="{escape(row.prompt)}">{what}</p>')
    body.append(_facts(row))
    if row.job_id:
        body.append(f'<p class="facts">{escape(row.job_id)}</p>')
    if row.error and group != "done":
        body.append(f'<p class="error">{escape(row.error)}</p>')
    body.append(_video(row, key))
    return (
        f'<li class="card {group}" data-group="{group}">'
        f'{_picture(row, key, what, index)}<div class="body">{"".join(body)}</div></li>'
    )


def _sheet(data: ReportData) -> str:
    buttons = [
        (
            f'<button type="button" data-filter="all" aria-pressed="true">'
            f"All ({len(data.rows):,})</button>"
        )
    ]
    buttons += [
        f'<button type="button" data-filter="{g}" aria-pressed="false">'
        f"{label} ({data.count(g):,})</button>"
        for g, label in _GROUPS
        if data.count(g)
    ]
    cards = "".join(_card(row, i) for i, row in enumerate(data.rows))
    return (
        '<section aria-labelledby="sheet-h"><h2 id="sheet-h">Contact sheet</h2>'
        f'<div class="filters" role="group" aria-label="Show rows">'
        f'{"".join(buttons)}</div><ul class="cards">{cards}</ul></section>'
    )


def render(data: ReportData) -> str:
    """The whole report page for *data*."""
    name = data.source or "batch"
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="color-scheme" content="light dark">'
        f"<title>Batch report: {escape(name)}</title><style>{_CSS}</style></head>"
        "<body><header><h1>Batch report</h1>"
        f'<p class="sub">{escape(name)} · made {_when(data.generated_at)}</p>'
        f"</header><main>{_totals(data)}{_charts(data)}{_sheet(data)}</main>"
        "<footer>Made by pixelbyte-async from the batch's journal and the files "
        "in this folder; rebuild it with 'pixelbyte-async batch report FILE "
        f"--out DIR'.</footer><script>{_JS}</script></body></html>\n"
    )
