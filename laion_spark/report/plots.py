"""The report's plots: gathered data -> PNG bytes per plot (matplotlib, without pyplot).

INPUT  -> report/data.py's dict
OUTPUT -> {name: PNG bytes} for each plot its data allows: funnel, similarity (per language group, the
          filter's thresholds marked), languages, sizes, aspects, statuses, domains, tags, recall

Figures are built with matplotlib's object API and the Agg canvas: pyplot and matplotlib.use() change
process-wide state (the backend, a figure registry), which a library run in a notebook must not touch.
"""

from __future__ import annotations

import io

GROUP_COLOURS = {"en": "#1f77b4", "multi": "#ff7f0e", "nolang": "#2ca02c"}


def _figure(width: float = 7.0, height: float = 3.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _bars(items: list[tuple[str, int]], title: str, colour: str = "#4c72b0") -> bytes:
    fig = _figure(7.0, max(2.0, 0.32 * len(items) + 1.0))
    ax = fig.add_subplot()
    labels = [str(k) for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    ax.barh(labels, values, color=colour)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:,}", va="center", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.margins(x=0.15)
    return _png(fig)


def _hist(ax, hist: dict, key: str, colour: str, label: str | None = None) -> None:
    edges = hist["edges"]
    counts = hist["counts"].get(key, [0] * (len(edges) - 1))
    ax.stairs(counts, edges, fill=True, alpha=0.55, color=colour, label=label)


def funnel(steps: list[dict]) -> bytes:
    return _bars([(s["label"], s["rows"]) for s in steps], "Rows left at each stage")


def similarity(hist: dict, thresholds: dict | None) -> bytes:
    fig = _figure(7.0, 3.4)
    ax = fig.add_subplot()
    for group, colour in GROUP_COLOURS.items():
        if group in hist["counts"]:
            _hist(ax, hist, group, colour, f"{group} ({sum(hist['counts'][group]):,})")
            if thresholds and group in thresholds:
                ax.axvline(thresholds[group], color=colour, linestyle="--", linewidth=1.2)
    ax.set_xlabel("cosine similarity of image and text (dashed: the filter's threshold)")
    ax.set_ylabel("pairs")
    ax.set_title("CLIP similarity per language group", fontsize=10)
    ax.legend(fontsize=8)
    return _png(fig)


def histogram(hist: dict, title: str, xlabel: str, ticks=None) -> bytes:
    fig = _figure(4.6, 3.0)
    ax = fig.add_subplot()
    _hist(ax, hist, "all", "#4c72b0")
    if ticks:
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks])
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _png(fig)


def recall(indices: dict) -> bytes:
    """Per index: recall@1, recall@10 and the cross-modal recall@10 on held-out queries, each with its 95%
    interval as an error bar (an older index without intervals: bars alone)."""
    fig = _figure(6.0, 3.8)
    ax = fig.add_subplot()
    names = list(indices)
    series = [("recall@1", "recall_at_1", None), ("recall@10", "recall_at_10", None),
              ("cross-modal recall@10", "recall_at_10", "cross_modal")]
    width = 0.8 / len(series)
    for s, (label, key, inner) in enumerate(series):
        values, low, high = [], [], []
        for n in names:
            source = indices[n] if inner is None else (indices[n].get(inner) or {})
            v = source.get(key)
            ci = source.get(f"{key}_ci95")
            values.append(v or 0.0)
            low.append(max(0.0, v - ci[0]) if v is not None and ci else 0.0)
            high.append(max(0.0, ci[1] - v) if v is not None and ci else 0.0)
        if inner is not None and not any(values):
            continue
        xs = [x + (s - 1) * width for x in range(len(names))]
        ax.bar(xs, values, width=width, label=label, yerr=[low, high], capsize=3)
    labels = []
    for n in names:
        cross = indices[n].get("cross_modal") or {}
        direction = cross.get("direction", "").replace("_", "-")
        labels.append(f"{n} index" + (f"\n(cross-modal: {direction})" if direction else ""))
    ax.set_xticks(list(range(len(names))), labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False)
    counts = sorted({indices[n].get("eval_queries") for n in names if indices[n].get("eval_queries")})
    on = f" ({', '.join(f'{c:,}' for c in counts)} queries)" if counts else ""
    ax.set_title(f"Recall on held-out queries{on}, 95% intervals", fontsize=10)
    return _png(fig)


def draw(data: dict) -> dict[str, bytes]:
    out = {}
    if data["funnel"]:
        out["funnel"] = funnel(data["funnel"])
    if data.get("similarity") and data["similarity"]["counts"]:
        out["similarity"] = similarity(data["similarity"], data.get("thresholds"))
    if data.get("languages"):
        out["languages"] = _bars([(k or "(none)", v) for k, v in data["languages"]], "Languages of the pairs (CLD3)")
    if data.get("domains"):
        out["domains"] = _bars([(k or "(none)", v) for k, v in data["domains"]], "Top domains of the image URLs")
    if data.get("statuses"):
        out["statuses"] = _bars(sorted(data["statuses"].items(), key=lambda kv: -kv[1]), "Download statuses")
    if data.get("sizes"):
        out["sizes"] = histogram(data["sizes"], "Image size (longer side, original)", "pixels",
                                 [(1, "10"), (2, "100"), (3, "1,000"), (4, "10,000")])
        out["aspects"] = histogram(data["aspects"], "Aspect ratio (width / height)", "",
                                   [(-2, "1:4"), (-1, "1:2"), (0, "1:1"), (1, "2:1"), (2, "4:1")])
    for tag, hist in (data.get("tags") or {}).items():
        if hist["counts"]:
            out[tag] = histogram(hist, tag, "score")
    if data.get("indices"):
        out["recall"] = recall(data["indices"])
    return out
