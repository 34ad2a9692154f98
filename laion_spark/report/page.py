"""The report page: gathered data + the written plot and thumbnail files -> index.html (one static page).

INPUT  -> report/data.py's dict, {plot name: file name}, {sample key: thumbnail file name}
OUTPUT -> the HTML text: the funnel as a table (each count in a cell with data-table / data-rows, for
          people and for tests), the plots, the indices' figures (recall on held-out queries with its
          interval, cross-modal recall, latency of one client and under load, each in a cell with
          data-index / data-metric), evaluate's results where the run has them, and a grid of kept and
          rejected pairs (captions escaped: they are web text)
"""

from __future__ import annotations

import re
from html import escape

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2rem} .muted{color:#666;font-size:.9rem} table{border-collapse:collapse;margin:.5rem 0}
td,th{border:1px solid #ddd;padding:.3rem .6rem;font-size:.9rem;vertical-align:top} th{background:#f5f5f5}
td.n{text-align:right;font-variant-numeric:tabular-nums} .plots{display:flex;flex-wrap:wrap;gap:1rem}
.plots img{max-width:100%;border:1px solid #eee} .grid{display:grid;grid-template-columns:repeat(4,1fr);gap:.8rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.4rem;font-size:.8rem;overflow-wrap:anywhere}
.card img{width:100%;height:150px;object-fit:contain;background:#fafafa} .reasons{font-size:.8rem;color:#555}
"""

TITLES = {"similarity": "CLIP similarity", "languages": "Languages", "domains": "Top domains",
          "statuses": "Download statuses", "sizes": "Image sizes", "aspects": "Aspect ratios",
          "punsafe": "punsafe", "pwatermark": "pwatermark", "aesthetic_score": "aesthetic score",
          "recall": "Index recall"}


def _plot(plots: dict, name: str) -> str:
    if name not in plots:
        return ""
    return f'<img src="{escape(plots[name])}" alt="{escape(TITLES.get(name, name))}" data-plot="{escape(name)}">'


def _funnel(steps: list[dict]) -> str:
    rows = []
    for s in steps:
        removed = ", ".join(f"{escape(str(k))} {v:,}" for k, v in sorted(s["removed"].items(), key=lambda kv: -kv[1]))
        rows.append(f'<tr><td>{escape(s["label"])}</td><td><code>{escape(s["table"])}</code></td>'
                    f'<td class="n" data-table="{escape(s["table"])}" data-rows="{s["rows"]}">{s["rows"]:,}</td>'
                    f'<td class="reasons">{removed or "&ndash;"}'
                    f'{"<br>" + escape(s["note"]) if s.get("note") else ""}</td></tr>')
    return ("<table><tr><th>stage</th><th>table</th><th>rows</th><th>removed on the way, per reason</th></tr>"
            + "".join(rows) + "</table>")


def _input_errors(errors: list[dict]) -> str:
    if not errors:
        return ""
    rows = "".join(f'<tr><td><code>{escape(e["file"])}</code></td>'
                   f'<td class="n" data-errors-file="{escape(e["file"])}" data-rows="{e["rows"]}">{e["rows"]:,}</td>'
                   f'<td class="reasons">{escape(e["first_error"][:300])}</td></tr>' for e in errors)
    return ("<h3>Input files with errors (extract)</h3><table><tr><th>file</th><th>error rows</th>"
            f"<th>first error</th></tr>{rows}</table>")


def _ci(ci) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _figure(field: str, metric: str, value, ci=None) -> str:
    """One figure as a cell: its value (and 95% interval) shown, and in data-index / data-metric / data-value /
    data-ci (for people and for tests)."""
    if value is None:
        return f'<td class="n" data-index="{escape(field)}" data-metric="{metric}">&ndash;</td>'
    shown = f"{value:.3f}{_ci(ci)}" if isinstance(value, float) else f"{value:,}"
    ci_attr = f' data-ci="{ci[0]},{ci[1]}"' if ci else ""
    return (f'<td class="n" data-index="{escape(field)}" data-metric="{metric}" data-value="{value}"{ci_attr}>'
            f"{shown}</td>")


def _indices(indices: dict) -> str:
    """index_infos.json figures per field -> the table: what was built, recall on the held-out queries with
    its 95% interval and their number, the cross-modal recall, latency of one client and under load; and
    a note saying how recall was measured (an older index without held-out figures shows dashes)."""
    if not indices:
        return '<p class="muted">No index in this run.</p>'
    head = ("<tr><th>field</th><th>index</th><th>search</th><th>vectors</th><th>dimension</th><th>bytes</th>"
            "<th>held-out queries</th><th>recall@1 (95%)</th><th>recall@10 (95%)</th>"
            "<th>cross-modal recall@10 (95%)</th><th>p50 / p99 ms, 1 client</th><th>p50 / p99 ms under load</th></tr>")
    rows, notes = [], []
    for f, i in indices.items():
        cross = i.get("cross_modal") or {}
        load = i.get("latency_under_load") or {}
        one = (f'{i["latency_ms_p50"]} / {i["latency_ms_p99"]}' if i.get("latency_ms_p99") is not None
               else "&ndash;")
        loaded = (f'{load["latency_ms_p50"]} / {load["latency_ms_p99"]} ({load["clients"]} clients)'
                  if load else "&ndash;")
        rows.append(
            f"<tr><td>{escape(f)}</td><td><code>{escape(str(i.get('index_key')))}</code></td>"
            f"<td><code>{escape(str(i.get('index_param')))}</code></td>"
            + _figure(f, "nb_vectors", i.get("nb_vectors")) + _figure(f, "dimension", i.get("dimension"))
            + _figure(f, "size_bytes", i.get("size_bytes")) + _figure(f, "eval_queries", i.get("eval_queries"))
            + _figure(f, "recall_at_1", i.get("recall_at_1"), i.get("recall_at_1_ci95"))
            + _figure(f, "recall_at_10", i.get("recall_at_10"), i.get("recall_at_10_ci95"))
            + _figure(f, "cross_modal_recall_at_10", cross.get("recall_at_10"), cross.get("recall_at_10_ci95"))
            + f'<td class="n" data-index="{escape(f)}" data-metric="latency">{one}</td>'
            + f'<td class="n" data-index="{escape(f)}" data-metric="latency_under_load">{loaded}</td></tr>')
        if i.get("eval_queries") is not None and i.get("recall_at_10_ci95"):
            tuning = i.get("tuning_recall_at_10")
            notes.append(
                f"{escape(f)} index: recall measured on {i['eval_queries']:,} held-out queries that played no part "
                f"in choosing the index or its search parameter"
                + (f" (the {i.get('tune_queries') or 0:,} queries it was tuned on gave recall@10 {tuning:.3f})"
                   if isinstance(tuning, float) else "")
                + (f"; cross-modal: {escape(cross['direction'].replace('_', '-'))}, {cross['queries']:,} "
                   f"{escape(cross['query_field'])} embeddings of held-out rows as queries" if cross else ""))
        else:
            notes.append(f"{escape(f)} index: written before held-out recall was measured; its recall is on the "
                         "queries it was tuned on")
    method = ("Recall is k-recall@k against the exact top-k by inner product over every indexed vector; a result "
              "whose score ties the k-th exact score counts as found (a duplicate in place of its twin); intervals "
              "are Wilson 95% over queries. ")
    return (f"<table>{head}{''.join(rows)}</table>"
            f'<p class="muted">{method}{"; ".join(notes)}.</p>')


def _evaluate(results: dict | None) -> str:
    """evaluate's results.json -> its table: one row per subset, each figure in a cell with data-subset /
    data-metric (for people and for tests), and the recipe they all trained with."""
    if not results:
        return ('<p class="muted">Not evaluated: <code>laion-spark evaluate run_dir=...</code> trains a CLIP on the '
                "filtered pairs and on baselines, then this page shows how each scores.</p>")
    metrics = [("zero_shot", "colour"), ("zero_shot", "shape"), ("zero_shot", "count"), ("retrieval", "recall@1"),
               ("retrieval", "recall@5")]
    head = "".join(f"<th>{escape(name if group == 'retrieval' else 'zero-shot ' + name)}</th>"
                   for group, name in metrics)
    from laion_spark.evaluate.subsets import in_order

    rows = []
    # results.json is written with sorted keys: the rows take evaluate's own order (filtered first) again
    ordered = {name: results["subsets"][name] for name in in_order(results["subsets"])}
    for subset, r in {**ordered, "chance": {**results["chance"], "pairs": None, "steps": None}}.items():
        cells = "".join(f'<td class="n" data-subset="{escape(subset)}" data-metric="{escape(name)}">'
                        f'{r[group][name]:.3f}</td>' for group, name in metrics)
        pairs = "" if r.get("pairs") is None else f"{r['pairs']:,}"
        rows.append(f"<tr><td>{escape(subset)}</td><td class=\"n\">{pairs}</td>{cells}</tr>")
    recipe = results["recipe"]
    note = (f"{escape(str(results['model']))} from scratch, {recipe['epochs']} epoch(s) x "
            f"{recipe['samples_per_epoch']:,} samples, batch {recipe['batch_size']} ({recipe['steps']} steps, "
            f"seed {recipe['seed']}), the same for every subset; measured on {results['heldout']['images']:,} "
            "held-out toy-world images.")
    return (f"<table><tr><th>trained on</th><th>pairs</th>{head}</tr>{''.join(rows)}</table>"
            f'<p class="muted">{note}</p>')


def _cards(rows: list[dict], thumbs: dict, kind: str) -> str:
    if not rows:
        return '<p class="muted">None.</p>'
    cards = []
    for r in rows:
        sim = r.get("similarity")
        extra = f"similarity {sim:.3f}" if isinstance(sim, float) else ""
        if r.get("language"):
            extra += f" &middot; {escape(str(r['language']))}"
        src = thumbs.get(f"{kind}:{r['sample_id']}")
        image = f'<img src="{escape(src)}" alt="">' if src else '<p class="muted">(no image)</p>'
        cards.append(f'<div class="card" data-kind="{kind}" data-sample="{int(r["sample_id"])}">{image}'
                     f'<div>{escape(str(r.get("text") or ""))}</div><div class="muted">{extra}</div></div>')
    return f'<div class="grid">{"".join(cards)}</div>'


# one card as _cards writes it (its text is escaped: no "<" inside); data-sample is absent from pages
# written before it was added, whose cards are known by their thumbnail
_CARD = re.compile(r'<div class="card" data-kind="[a-z]+"(?: data-sample="(?P<id>-?[0-9]+)")?>'
                   r'(?:<img src="(?P<src>[^"]*)" alt="">|<p class="muted">\(no image\)</p>)'
                   r'<div>[^<]*</div><div class="muted">[^<]*</div></div>')
_EMPTY_GRID = '<div class="grid"></div>'


def without_samples(html: str, sample_ids: set[int], thumbnails: set[str]) -> tuple[str, int]:
    """A page render wrote + sample ids + their thumbnails' file names -> the page without their cards
    (an emptied grid says None.), and how many cards went."""
    removed = 0

    def card(m: re.Match) -> str:
        nonlocal removed
        ours = (m["id"] is not None and int(m["id"]) in sample_ids) or (m["src"] is not None
                                                                       and m["src"] in thumbnails)
        removed += ours
        return "" if ours else m[0]

    out = _CARD.sub(card, html)
    return (out.replace(_EMPTY_GRID, '<p class="muted">None.</p>') if removed else html), removed


def render(data: dict, plots: dict, thumbs: dict) -> str:
    manifest = data.get("manifest") or {}
    versions = manifest.get("versions") or {}
    version_line = ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    tag_plots = "".join(_plot(plots, n) for n in ("punsafe", "pwatermark", "aesthetic_score"))
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>laion-spark run report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>laion-spark run report</h1>",
        f'<p class="muted">run directory <code>{escape(data["run_dir"])}</code>'
        + (f' &middot; pipeline started {escape(str(manifest.get("started")))}' if manifest else "") + "</p>",
        f'<p class="muted">{escape(version_line)}</p>' if version_line else "",
        "<h2>Where every candidate went</h2>", _funnel(data["funnel"]), _plot(plots, "funnel"),
        _input_errors(data.get("input_errors") or []),
        "<h2>CLIP similarity</h2>", '<div class="plots">', _plot(plots, "similarity"), "</div>",
        "<h2>Pairs and images</h2>", '<div class="plots">',
        *[_plot(plots, n) for n in ("languages", "domains", "statuses", "sizes", "aspects")], "</div>",
        "<h2>Tags</h2>", f'<div class="plots">{tag_plots}</div>' if tag_plots else '<p class="muted">Not tagged.</p>',
        "<h2>Indices</h2>", _indices(data.get("indices") or {}), _plot(plots, "recall"),
        "<h2>Does the filter make a better dataset?</h2>", _evaluate(data.get("evaluate")),
        "<h2>Sample pairs kept by the filter</h2>", _cards(data.get("kept") or [], thumbs, "kept"),
        "<h2>Sample pairs rejected below the threshold</h2>", _cards(data.get("rejected") or [], thumbs, "rejected"),
        '<p class="muted">Every number on this page is counted from the run\'s tables and their _summary.json.</p>',
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)
