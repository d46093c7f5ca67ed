# ruff: noqa: E501  (markup lines of the template)
"""The report page's Jinja2 template (autoescaped: every name, reason and path is text)."""

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111}
h1{font-size:1.5em;margin:0 0 .3em}h2{font-size:1.2em;margin:1.6em 0 .4em}
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:3px 6px;vertical-align:top}
th{background:#eee;text-align:left}.meta td:first-child{font-weight:600}
pre{white-space:pre-wrap;background:#f6f6f6;border:1px solid #ddd;padding:6px;max-height:24em;
overflow:auto;font-size:12px}
.st{display:inline-block;min-width:1.25em;text-align:center;font:700 12px/1.4 monospace;
border-radius:3px;margin:1px;padding:0 2px;border:2px solid transparent}
.passed{background:#2e7d32;color:#fff}
.failed{background:#c62828;color:#fff}
.error{background:repeating-linear-gradient(45deg,#6a1b9a 0 4px,#8e24aa 4px 8px);color:#fff}
.excluded{background:repeating-linear-gradient(135deg,#9e9e9e 0 3px,#e0e0e0 3px 6px);color:#000}
.impossible{background:#fff;color:#555;border:2px dashed #999}
.host{background:#fff3e0;color:#e65100;border:2px solid #fb8c00}
.blocked{background:#e1bee7;color:#4a148c}
.skipped{background:#e0e0e0;color:#333}
.missing{background:#fff;color:#000;border:2px dotted #000}
.tile{display:block;text-decoration:none;color:inherit;white-space:nowrap}
.grid td{text-align:center}.grid td.k{text-align:left;font-weight:600}
.bad{border-left:4px solid #c62828;padding:.2em .8em;margin:.6em 0;background:#fff8f8}
.bad-error{background:#fbf5fd;border-left-color:#6a1b9a}.bad-missing{border-left-color:#000}
.reason{font-family:monospace;white-space:pre-wrap}
.change-new-failure{font-weight:700;color:#c62828}.change-fixed{font-weight:700;color:#2e7d32}
.links a{margin-right:.8em}.strip{font-family:monospace;letter-spacing:1px}
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css }}</style>
</head>
<body>
<h1>{{ title }}</h1>
<p id="totals">{{ cells|length }} cells:
{% for status, n in totals %}<span class="st {{ status.value }}">{{ labels[status][0] }}</span>
{{ n }} {{ status.value }}{% if not loop.last %}, {% endif %}{% endfor %}</p>

<h2>Run</h2>
<table class="meta" id="meta">
{% for key, value in meta %}<tr><td>{{ key }}</td><td>{% if value.startswith('https://') %}<a href="{{ value }}">{{ value }}</a>{% else %}{{ value }}{% endif %}</td></tr>
{% endfor %}</table>

{% if deltas is not none %}
<h2 id="compare">Since the baseline{% if baseline %} ({{ baseline }}){% endif %}</h2>
<p>{% for change, n in change_counts %}{{ n }} {{ change.value }}{% if not loop.last %}, {% endif %}{% endfor %}</p>
{% if changed %}
<table id="changes"><tr><th>cell</th><th>change</th><th>status</th><th>now</th><th>before</th></tr>
{% for d in changed %}<tr class="change-{{ d.change.value|replace(' ', '-') }}" data-change="{{ d.change.value }}">
<td><a href="#cell-{{ d.cell }}">{{ d.cell }}</a></td><td>{{ d.change.value }}</td><td>{{ d.text }}</td>
<td class="reason">{{ d.after.detail if d.after else '' }}</td><td class="reason">{{ d.before.detail if d.before else '' }}</td></tr>
{% endfor %}</table>
{% else %}<p>Nothing changed.</p>{% endif %}
{% endif %}

<section id="attention"><h2>Needs attention ({{ bad|length }})</h2>
{% for c in bad %}<div class="bad bad-{{ c.status.value }}" id="cell-{{ c.id }}" data-status="{{ c.status.value }}">
<p><span class="st {{ c.status.value }}">{{ labels[c.status][0] }}</span> <b>{{ c.id }}</b>
{% if c.bad_stage %}stage <b>{{ c.bad_stage.stage }}</b>{% endif %} &mdash; {{ labels[c.status][1] }}
{% if c.id in flaky and flaky[c.id].flaky %} &mdash; flaky: {{ flaky[c.id].flips }} flips in {{ flaky[c.id].nights }} nights{% endif %}</p>
<p class="reason">{{ c.reason }}</p>
{% if c.bad_stage and c.bad_stage.detail != c.bad_stage.reason %}<details><summary>guest evidence</summary><pre>{{ c.bad_stage.detail }}</pre></details>{% endif %}
<p class="links">{% for kind, href in c.logs.items() %}<a href="{{ href }}">{{ kind }}</a>{% else %}no logs in the bundle{% endfor %}</p>
</div>
{% else %}<p>No failures, no errors.</p>{% endfor %}</section>

<h2 id="grid">Matrix</h2>
<p>Each cell shows its five stages, left to right: {{ stages|join(', ') }}.</p>
{% for lane in lanes %}
<h3>{{ lane.name }}</h3>
<table class="grid" id="grid-{{ lane.name }}"><tr><th>kernel</th>{% for cpu in lane.cpus %}<th>{{ cpu }}</th>{% endfor %}</tr>
{% for kernel in lane.kernels %}<tr><td class="k">{{ kernel }}</td>
{% for cpu in lane.cpus %}{% set c = lane.cells.get((kernel, cpu)) %}<td>{% if c %}<a class="tile" href="#row-{{ c.id }}" data-cell="{{ c.id }}" data-status="{{ c.status.value }}" title="{{ c.id }}: {{ c.summary }}">
{% for st in c.stages.values() %}<span class="st {{ st.status.value }}" title="{{ st.stage }}: {{ st.status.value }} {{ st.reason }}" aria-label="{{ st.stage }} {{ st.status.value }}">{{ labels[st.status][0] }}</span>{% endfor %}</a>{% else %}&nbsp;{% endif %}</td>
{% endfor %}</tr>
{% endfor %}</table>
{% endfor %}

<h2 id="legend">Legend</h2>
<table>{% for status, (letter, words) in labels.items() %}<tr><td><span class="st {{ status.value }}">{{ letter }}</span></td><td>{{ words }}</td></tr>{% endfor %}</table>

{% if skips %}<h2 id="skips">Skipped cells, by kind</h2>
{% for status, group in skips %}<h3><span class="st {{ status.value }}">{{ labels[status][0] }}</span> {{ labels[status][1] }} ({{ group|length }})</h3>
<ul>{% for c in group %}<li>{{ c.id }}: <span class="reason">{{ c.reason }}</span></li>{% endfor %}</ul>
{% endfor %}{% endif %}

<h2 id="cells">Every cell</h2>
<table id="all"><tr><th>cell</th><th>verdict</th>{% for t in times %}<th>{{ t }} s</th>{% endfor %}<th>logs</th>{% if flaky %}<th>last nights</th>{% endif %}</tr>
{% for c in cells %}<tr id="row-{{ c.id }}" data-status="{{ c.status.value }}"><td>{{ c.id }}</td><td><span class="st {{ c.status.value }}">{{ labels[c.status][0] }}</span> {{ c.summary }}</td>
{% for t in times %}<td>{{ c.properties.get('time_' ~ t ~ '_s', '') }}</td>{% endfor %}
<td class="links">{% for kind, href in c.logs.items() %}<a href="{{ href }}">{{ kind }}</a>{% endfor %}</td>
{% if flaky %}<td class="strip">{{ flaky[c.id].strip if c.id in flaky else '' }}</td>{% endif %}</tr>
{% endfor %}</table>
<p>Generated by rig report {{ version }}.</p>
</body>
</html>
"""
