"""report.html: one self-contained page (inline CSS and JS, the plot as a data URI), with a sortable experiment table."""

from __future__ import annotations

import base64
from html import escape

from autoresearch.report.figures import TIME_PARTS, duration, fmt, last_log_line, one_line

# Nothing may be fetched: the page's own policy forbids any source but its inline code and data: images.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

COLOURS = {"keep": "#1e8e4e", "discard": "#888", "crash": "#c0392b", "timeout": "#d35400", "invalid": "#8e44ad",
           "running": "#138d9c"}

CSS = """
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1400px;margin:0 auto;padding:16px 24px 48px}
h1{font-size:24px;margin:8px 0 2px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.sub{color:#666;margin:0 0 12px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(200px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:10px 12px}
.card b{display:block;font-size:20px}.card.wide{grid-column:span 2}.card span{color:#666;font-size:12px}
img.plot{width:100%;height:auto;background:#fff;border:1px solid #e3e3e3;border-radius:6px}
table{border-collapse:collapse;background:#fff;font-size:13px}th,td{border:1px solid #e3e3e3;padding:3px 7px;vertical-align:top}
th{background:#f0f0f0;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
#experiments th{cursor:pointer;user-select:none;position:sticky;top:0}
#experiments th[aria-sort=ascending]::after{content:" \\25B2"}#experiments th[aria-sort=descending]::after{content:" \\25BC"}
.st{font-weight:600}.desc{max-width:460px}.reason{max-width:380px;color:#555}
.bar{display:flex;height:22px;border-radius:4px;overflow:hidden;margin:6px 0 10px;max-width:900px}
.bar div{height:100%}.controls{margin:8px 0;display:flex;gap:10px;align-items:center}
.controls input{padding:4px 8px;width:320px}.controls select{padding:4px}
details.kept{background:#fff;border:1px solid #e3e3e3;border-radius:6px;margin:8px 0;padding:6px 10px}
details.kept summary{cursor:pointer}.highlight pre{margin:6px 0;padding:8px;overflow-x:auto;font-size:12px}
.warn{color:#9a6700}ul.tree,ul.tree ul{list-style:none;padding-left:16px;margin:0}ul.tree{padding-left:0}
ul.tree li{border-left:1px solid #ccc;padding-left:8px;font-size:13px;white-space:nowrap}
ul.tree a{color:inherit;text-decoration:none}.best{background:#fff3b0}.scroll{overflow-x:auto}
"""

SCRIPT = """
(function(){
  var table=document.getElementById('experiments'); if(!table) return;
  var body=table.tBodies[0], rows=Array.prototype.slice.call(body.rows), heads=table.tHead.rows[0].cells;
  var sorted=-1, asc=true;
  function value(row,i){var c=row.cells[i]; return c.hasAttribute('data-v')?c.getAttribute('data-v'):c.textContent;}
  Array.prototype.forEach.call(heads,function(th,i){
    th.addEventListener('click',function(){
      asc=(sorted===i)?!asc:true; sorted=i;
      var numeric=th.getAttribute('data-type')==='num';
      rows.sort(function(a,b){
        var x=value(a,i), y=value(b,i);
        if(numeric){
          var fx=x===''?NaN:parseFloat(x), fy=y===''?NaN:parseFloat(y);
          if(isNaN(fx)&&isNaN(fy)) return 0; if(isNaN(fx)) return 1; if(isNaN(fy)) return -1;
          return asc?fx-fy:fy-fx;
        }
        return asc?x.localeCompare(y):y.localeCompare(x);
      });
      rows.forEach(function(r){body.appendChild(r);});
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute('aria-sort');});
      th.setAttribute('aria-sort',asc?'ascending':'descending');
    });
  });
  var text=document.getElementById('filter'), status=document.getElementById('status-filter'),
      shown=document.getElementById('shown');
  function apply(){
    var q=text.value.toLowerCase(), s=status.value, n=0;
    rows.forEach(function(r){
      var ok=(!s||r.getAttribute('data-status')===s)&&(!q||r.textContent.toLowerCase().indexOf(q)>=0);
      r.hidden=!ok; if(ok) n++;
    });
    shown.textContent=n+' of '+rows.length+' experiments shown';
  }
  text.addEventListener('input',apply); status.addEventListener('change',apply); apply();
})();
"""


def highlight_diff(diff: str) -> str:
    """A diff as highlighted HTML (pygments, inline styles); pygments escapes the text."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import DiffLexer

    return highlight(diff, DiffLexer(), HtmlFormatter(noclasses=True))


def e(text) -> str:
    return escape(str(text), quote=True)


def _status(status: str) -> str:
    return f'<span class="st" style="color:{COLOURS.get(status, "#222")}">{e(status)}</span>'


def _num(value, text: str | None = None) -> str:
    return f'<td class="n" data-v="{"" if value is None else e(repr(float(value)))}">{e(text if text is not None else value)}</td>'


def _cards(report) -> str:
    s = report.summary
    cards = []
    if s.baseline is not None and s.best is not None:
        change = fmt(s.delta, signed=True) + (f" ({s.delta_pct:+.2f}%)" if s.delta_pct is not None else "")
        cards.append((f"{fmt(s.baseline.metric)} → {fmt(s.best.metric)}", f"baseline → best {s.metric_name}: {change}"))
    else:
        cards.append(("-", "no kept measurement yet"))
    cards += [(f"{s.finished}" + (f" + {s.running}" if s.running else ""),
               "experiments finished" + (" + running" if s.running else "")),
              (f"{s.kept} ({100 * s.keep_rate:.1f}%)", "kept (of candidates)"),
              (f"{s.failed} ({100 * s.failed_rate:.1f}%)", "crashed or timed out"),
              (f"{s.invalid}", "invalid (refused by the checks)"),
              (f"{s.per_hour:.1f}", "experiments per hour"),
              (f"${s.cost_usd:.4f}", f"agent spend, {s.llm_calls:,} LLM calls"),
              (f"{s.input_tokens + s.output_tokens:,}", f"tokens ({s.input_tokens:,} in, {s.output_tokens:,} out)"),
              (f"{s.sigma:.4g}" if s.sigma is not None else "-", "noise σ between seeds")]
    return '<section class="cards">' + "".join(f'<div class="card{" wide" if i == 0 else ""}"><b>{e(v)}</b>'
                                               f'<span>{e(t)}</span></div>' for i, (v, t) in enumerate(cards)) + "</section>"


def _time(report) -> str:
    s = report.summary
    total = s.total_seconds
    if total <= 0:
        return "<p>Nothing finished yet.</p>"
    colours = ("#2ecc71", "#3498db", "#f39c12", "#95a5a6")
    bar = "".join(f'<div title="{e(label)}" style="width:{100 * s.time[key] / total:.3f}%;background:{c}"></div>'
                  for (label, key), c in zip(TIME_PARTS, colours))
    rows = "".join(f'<tr><td><span style="color:{c}">■</span> {e(label)}</td><td class="n">{e(duration(s.time[key]))}</td>'
                   f'<td class="n">{100 * s.time[key] / total:.1f}%</td></tr>' for (label, key), c in zip(TIME_PARTS, colours))
    return (f'<div class="bar">{bar}</div><table><tr><th>part</th><th>time</th><th>share</th></tr>{rows}'
            f'<tr><th>total</th><td class="n">{e(duration(total))}</td><td class="n">100%</td></tr></table>')


def _spend(report) -> str:
    s = report.summary
    if not (s.llm_calls or s.input_tokens or s.output_tokens or s.cost_usd):
        return "<p>None recorded: the agent made no LLM calls (an offline agent such as <code>tune</code>).</p>"
    items = [("LLM calls", f"{s.llm_calls:,}"), ("input tokens", f"{s.input_tokens:,}"),
             ("output tokens", f"{s.output_tokens:,}"), ("dollars (estimated)", f"${s.cost_usd:.4f}"),
             ("per finished experiment", f"${s.cost_per_experiment:.4f}")]
    if s.kept:
        items.append(("per kept change", f"${s.cost_usd / s.kept:.4f}"))
    return "<table>" + "".join(f'<tr><td>{e(k)}</td><td class="n">{e(v)}</td></tr>' for k, v in items) + "</table>"


def _kept(report) -> str:
    if not report.kept:
        return "<p>None yet.</p>"
    out = []
    for i, k in enumerate(report.kept, 1):
        r = k.row
        against = (f"{fmt(k.delta, signed=True)} vs the previous best {fmt(k.previous_best)}" if k.delta is not None
                   else "the starting point")
        test = f"; hidden test split {fmt(r.test_metric)}" if r.test_metric is not None else ""
        warn = f' <span class="warn">⚠ {e(report.flags[r.id])}</span>' if r.id in report.flags else ""
        body = highlight_diff(r.diff) if r.diff.strip() else "<p>(no diff: the starting commit)</p>"
        out.append(f'<details class="kept" open id="kept-{r.id}"><summary><b>{i}. #{r.id}</b> {e(one_line(r.description))}'
                   f' — {e(report.summary.metric_name)} <b>{e(fmt(r.metric))}</b> ({e(against)}){e(test)}; commit '
                   f'<code>{e((r.commit_sha or "-")[:7])}</code>{warn}</summary>{body}</details>')
    return "".join(out)


def _top(report) -> str:
    if not report.top:
        return "<p>No measured candidate yet.</p>"
    head = f"<tr><th>#</th><th>status</th><th>{e(report.summary.metric_name)}</th><th>delta</th><th>parent</th><th>description</th></tr>"
    return "<table>" + head + "".join(
        f'<tr><td class="n"><a href="#e{x.row.id}">{x.row.id}</a></td><td>{_status(x.status)}</td>'
        f'<td class="n">{e(fmt(x.row.metric))}</td><td class="n">{e(fmt(x.delta, signed=True))}</td>'
        f'<td class="n">{"#" + str(x.parent) if x.parent is not None else "-"}</td><td class="desc">{e(one_line(x.row.description))}</td></tr>'
        for x in report.top) + "</table>"


def _failures(rows, with_log: bool) -> str:
    if not rows:
        return "<p>None.</p>"
    head = "<tr><th>#</th><th>status</th><th>attempt</th><th>description</th><th>reason</th>" + \
           ("<th>last log line</th>" if with_log else "") + "</tr>"
    return "<table>" + head + "".join(
        f'<tr><td class="n"><a href="#e{r.id}">{r.id}</a></td><td>{_status(r.status)}</td><td class="n">{r.attempt}</td>'
        f'<td class="desc">{e(one_line(r.description))}</td><td class="reason">{e(r.reason)}</td>'
        + (f'<td class="reason"><code>{e(last_log_line(r))}</code></td>' if with_log else "") + "</tr>" for r in rows) + "</table>"


def _flags(report) -> str:
    if report.flags:
        return "<ul>" + "".join(f'<li><a href="#e{i}">#{i}</a> {e(one_line(report.rows_by_id[i].description))}: '
                                f'<span class="warn">{e(why)}</span></li>' for i, why in report.flags.items()) + "</ul>"
    if any(r.test_metric is not None for r in report.rows):
        return f"<p>None: every kept gain on val is shared by the hidden test split within {report.k:g}σ.</p>"
    return "<p>No hidden test split was scored (the task has no <code>test</code> command).</p>"


def _tree(report) -> str:
    """The search tree as nested lists, built without recursion (a greedy night is a chain hundreds deep)."""
    ids = set(report.rows_by_id)
    children: dict = {}
    for r in report.rows:
        parent = report.parents.get(r.id)
        children.setdefault(parent if parent in ids else None, []).append(r)
    out, stack = ['<div class="scroll"><ul class="tree">'], [("open", r) for r in reversed(children.get(None, []))]
    while stack:
        kind, r = stack.pop()
        if kind == "close":
            out.append("</ul></li>")
            continue
        status = "running" if r.state != "done" else r.status
        best = r.id == report.best_id
        out.append(f'<li><span{" class=best" if best else ""}><a href="#e{r.id}">#{r.id}</a> <code>{e(fmt(r.metric))}</code> '
                   f'{_status(status)} <span title="worker {r.worker}">w{r.worker}</span> {e(one_line(r.description, 90))}'
                   + (" ★ best" if best else "") + "</span>")
        below = children.get(r.id, [])
        if below:
            out.append("<ul>")
            stack.append(("close", None))
            stack.extend(("open", c) for c in reversed(below))
        else:
            out.append("</li>")
    out.append("</ul></div>")
    return "".join(out)


def _table(report) -> str:
    name = report.summary.metric_name
    tested = any(r.test_metric is not None for r in report.rows)
    cols = [("#", "num"), ("status", "text"), (name, "num")] + ([(f"test {name}", "num")] if tested else []) + \
           [("delta", "num"), ("description", "text"), ("parent", "num"), ("worker", "num"), ("seconds", "num"),
            ("cost $", "num"), ("reason", "text")]
    head = "".join(f'<th data-type="{t}" title="click to sort">{e(c)}</th>' for c, t in cols)
    lines = []
    for x in report.experiments:
        r = x.row
        reason = f"running on {r.owner_host} (pid {r.owner_pid})" if x.status == "running" else r.reason
        if r.id in report.flags:
            reason = f"{reason} ⚠ {report.flags[r.id]}".strip()
        cells = [_num(r.id, str(r.id)), f'<td data-v="{e(x.status)}">{_status(x.status)}</td>', _num(r.metric, fmt(r.metric))]
        if tested:
            cells.append(_num(r.test_metric, fmt(r.test_metric)))
        cells += [_num(x.delta, fmt(x.delta, signed=True)), f'<td class="desc">{e(one_line(r.description))}</td>',
                  _num(x.parent, "-" if x.parent is None else f"#{x.parent}"), _num(r.worker, str(r.worker)),
                  _num(r.experiment_seconds, "-" if r.experiment_seconds is None else f"{r.experiment_seconds:.0f}"),
                  _num(r.cost_usd if r.llm_calls else None, f"{r.cost_usd:.4f}" if r.llm_calls else "-"),
                  f'<td class="reason">{e(reason)}</td>']
        lines.append(f'<tr id="e{r.id}" data-id="{r.id}" data-status="{e(x.status)}">{"".join(cells)}</tr>')
    statuses = sorted({x.status for x in report.experiments})
    options = '<option value="">every status</option>' + "".join(f'<option value="{e(s)}">{e(s)}</option>' for s in statuses)
    return (f'<div class="controls"><input id="filter" type="search" placeholder="filter: any text in the row" '
            f'aria-label="filter"><select id="status-filter" aria-label="status">{options}</select><span id="shown">'
            f'{len(lines)} experiments</span></div><table id="experiments"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(lines)}</tbody></table>')


def render_html(report, png: bytes) -> str:
    """The whole of report.html for a `Report`, with `png` (progress.png's bytes) embedded."""
    s = report.summary
    image = base64.b64encode(png).decode("ascii")
    sections = [
        ("summary", "Summary", _cards(report)),
        ("progress", "Progress", f'<img class="plot" id="progress-plot" alt="progress: {e(s.metric_name)} per experiment" '
                                 f'src="data:image/png;base64,{image}">'),
        ("time", "Where the time went", _time(report)),
        ("spend", "The agent's spend", _spend(report)),
        ("kept", f"Kept changes ({len(report.kept)})", _kept(report)),
        ("top", f"Top experiments by delta against their parent ({len(report.top)})", _top(report)),
        ("crashes", f"Ideas that crashed or timed out ({len(report.crashed)})", _failures(report.crashed, True)),
    ]
    if report.invalid:
        sections.append(("invalid", f"Invalid results ({len(report.invalid)})", _failures(report.invalid, False)))
    sections.append(("disagreements", f"Val/test disagreements ({len(report.flags)})", _flags(report)))
    if s.draws_tree:
        why = f"{s.workers} workers" if s.workers > 1 else "the tree strategy"
        sections.append(("tree", f"Search tree ({why})", _tree(report)))
    sections.append(("all", f"Every experiment ({len(report.experiments)})", _table(report)))
    body = "".join(f'<section id="{sid}"><h2>{e(title)}</h2>{html}</section>' if sid != "summary" else html
                   for sid, title, html in sections)
    sub = (f"Branch <code>{e(s.branch)}</code>, metric <code>{e(s.metric_name)}</code> "
           f"({'higher' if s.maximize else 'lower'} is better). Made {e(report.made_at)} from the journal as recorded so far"
           + (f"; {s.running} experiment(s) still running, shown as running." if s.running else "."))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>autoresearch report: {e(report.tag)}</title><style>{CSS}</style></head><body><main>'
            f'<h1>autoresearch report: {e(report.tag)}</h1><p class="sub">{sub}</p>{body}</main>'
            f'<script>{SCRIPT}</script></body></html>\n')
