"""report: the index section (no Spark). An index written before held-out recall was measured (no interval,
no query count) still renders, says what its figure is, and draws its bars; the held-out figures of a
current one are tested end to end in test_index_heldout.py."""

from __future__ import annotations

from laion_spark.report import page, plots


def test_an_older_index_without_heldout_figures_still_renders_and_says_so():
    old = {"index_key": "IVF1,Flat", "index_param": "nprobe=1", "nb_vectors": 300, "dimension": 16,
           "recall_at_1": 1.0, "recall_at_10": 1.0, "latency_ms_p50": 0.02, "latency_ms_p99": 0.1, "size_bytes": 100}
    html = page.render({"run_dir": "/r", "funnel": [], "indices": {"image": old}}, {"recall": "plots/recall.png"}, {})
    assert 'data-index="image" data-metric="recall_at_10" data-value="1.0">1.000</td>' in html
    assert 'data-index="image" data-metric="eval_queries">&ndash;</td>' in html
    assert "written before held-out recall was measured" in html
    assert plots.draw({"funnel": [], "indices": {"image": old}})["recall"].startswith(b"\x89PNG")
