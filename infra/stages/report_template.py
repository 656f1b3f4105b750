"""The Jinja2 template of the study report (one page, no external resources)."""

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ study }}: group report</title>
<link rel="icon" href="data:,">
<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
nav a{margin-right:1em}
table{border-collapse:collapse;margin:.5em 0 1.2em;font-size:.85em}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f2f2f2}td.l,th.l{text-align:left}
img{max-width:100%;border:1px solid #ddd}.muted{color:#777}.ex{color:#a33}
</style></head><body>
<h1>{{ study }}: group report</h1>
<p class="muted">Generated {{ generated }} by boldcloud {{ versions.get('boldcloud', '') }}.</p>
<nav><a href="#cohort">Cohort</a><a href="#motion">Motion QC</a><a href="#designs">Designs</a>
<a href="#group">Group maps</a><a href="#roi">ROI</a><a href="#clinical">Clinical</a>
<a href="#methods">Methods</a></nav>

<section id="cohort"><h2>Cohort and exclusions</h2>
<p>{{ subjects|length }} subject(s); {{ runs.total }} run(s), {{ runs.excluded|length }} excluded;
{{ runs.sessions_excluded|length }} session(s) excluded.</p>
<table class="cohort"><thead><tr><th class="l">subject</th><th class="l">normalisation</th>
<th>Dice</th><th>NMI</th><th class="l">reason</th></tr></thead><tbody>
{% for s, info in subjects|dictsort %}<tr><td class="l">{{ s }}</td>
<td class="l">{{ 'failed QC' if info.failed else info.state }}</td>
<td>{{ info.qc.Dice if info.qc else '' }}</td><td>{{ info.qc.NMI if info.qc else '' }}</td>
<td class="l">{{ info.reason or '' }}</td></tr>{% endfor %}</tbody></table>
{% if runs.excluded %}<h3>Excluded runs</h3><table class="excluded-runs"><thead><tr>
<th class="l">run</th><th class="l">reason</th></tr></thead><tbody>
{% for r, why in runs.excluded|dictsort %}<tr><td class="l">{{ r }}</td><td class="l">{{ why }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if runs.sessions_excluded %}<h3>Excluded sessions</h3><table class="excluded-sessions"><thead>
<tr><th class="l">session</th><th class="l">reason</th></tr></thead><tbody>
{% for r, why in runs.sessions_excluded|dictsort %}<tr><td class="l">{{ r }}</td><td class="l">{{ why }}</td></tr>
{% endfor %}</tbody></table>{% endif %}
{% if warnings and warnings.rows %}<h3>Warnings</h3><table class="warnings"><thead><tr>
<th class="l">stage</th><th class="l">unit</th><th class="l">warning</th></tr></thead><tbody>
{% for stage, unit, text in warnings.rows %}<tr><td class="l">{{ stage }}</td><td class="l">{{ unit }}</td>
<td class="l">{{ text }}</td></tr>{% endfor %}</tbody></table>
{% if warnings.more %}<p class="muted">and {{ warnings.more }} more (see the manifest records).</p>{% endif %}{% endif %}</section>

<section id="motion"><h2>Motion QC</h2>
{% if motion %}<p>{{ motion_summary.n }} run(s): median of the per-run maximum framewise
displacement {{ '%.2f'|format(motion_summary.median_max_fd) }} mm (worst
{{ '%.2f'|format(motion_summary.worst_max_fd) }} mm); {{ motion_summary.excluded }} run(s) over the
exclusion threshold.</p>
<table class="motion"><thead><tr><th class="l">run</th><th>max FD (mm)</th>
<th>max relative RMS (mm)</th><th>volumes FD &gt; 0.5 mm</th><th class="l">excluded</th>
<th class="l">reason</th></tr></thead><tbody>
{% for m in motion %}<tr><td class="l">{{ m.run }}</td><td>{{ '%.3f'|format(m.max_fd_mm) if m.max_fd_mm is number else '' }}</td>
<td>{{ '%.3f'|format(m.max_rel_rms_mm) if m.max_rel_rms_mm is number else '' }}</td><td>{{ m.n_fd_over_0p5 }}</td>
<td class="l">{{ 'yes' if m.excluded else 'no' }}</td><td class="l">{{ m.reason or '' }}</td></tr>
{% endfor %}</tbody></table>
{% else %}<p class="muted">No motion records in this store.</p>{% endif %}</section>

<section id="designs"><h2>Design matrices</h2>
<h3>First level</h3>
{% for d in designs %}{% if d.src %}<figure><img alt="design of {{ d.run }}" src="{{ d.src }}" style="max-height:420px">
<figcaption>{{ d.run }} (one of {{ d.n_runs }} run designs of task {{ d.task }})</figcaption></figure>{% endif %}
{% else %}<p class="muted">No first-level design plots in this store.</p>{% endfor %}
<h3>Group level</h3>
{% for a in analyses %}{% if a.design_image %}<figure style="display:inline-block;vertical-align:top">
<img alt="group design of {{ a.label }}" src="{{ a.design_image }}"><figcaption>{{ a.label }}</figcaption></figure>
{% endif %}{% endfor %}</section>

<section id="group"><h2>Group maps</h2>
{% for a in analyses %}<h3 id="{{ a.label }}">{{ a.label }}</h3>
{% if a.state != 'done' %}<p class="ex">Not estimated ({{ a.state }}): {{ a.reason or '' }}</p>{% else %}
<p>N = {{ a.outputs.n }} ({{ a.names }}); dof {{ '%.1f'|format(a.outputs.dof) }};
inference: {{ a.outputs.inference.method }}{% if a.outputs.inference.n_permutations %}, {{ a.outputs.inference.n_permutations }} permutations{% if a.outputs.inference.exhaustive %} (exhaustive){% endif %}{% endif %}.
{{ a.outputs.significant }} significant cluster(s).</p>
{% if a.outputs.excluded %}<p class="ex">Left out: {% for s, why in a.outputs.excluded|dictsort %}sub-{{ s }} ({{ why }}){% if not loop.last %}; {% endif %}{% endfor %}</p>{% endif %}
{% if a.image %}<img alt="z map of {{ a.label }}" src="{{ a.image }}">{% endif %}
<div class="clusters">{{ a.table }}</div>
<p>{% for name, href in a.links|dictsort %}<a href="{{ href }}">{{ name }} (TSV)</a> {% endfor %}</p>
{% endif %}{% endfor %}</section>

<section id="roi"><h2>ROI analysis</h2>
{% if roi_tables %}{% for t in roi_tables %}<h3>{{ t.title }}</h3>{{ t.html }}
<p><a href="{{ t.href }}">TSV</a></p>{% endfor %}
{% else %}<p class="muted">No ROI: {{ roi_reason }}</p>{% endif %}
{% for img in scatter %}<img class="scatter" alt="{{ img.alt }}" src="{{ img.src }}" style="width:32%">{% endfor %}
</section>

<section id="clinical"><h2>Clinical statistics</h2>
{% if clinical_tables %}{% for t in clinical_tables %}<h3>{{ t.title }}</h3>{{ t.html }}
<p><a href="{{ t.href }}">TSV</a></p>{% endfor %}
{% else %}<p class="muted">No clinical measures configured or available.</p>{% endif %}</section>

<section id="methods"><h2>Methods</h2><p>{{ methods }}</p></section>
</body></html>
"""  # noqa: E501

__all__ = ["TEMPLATE"]
