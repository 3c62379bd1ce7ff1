"""``pipeline.job.labels.Children``: the same Prometheus child for the same label values, counts
land on the metric, and the cache stays bounded."""

from prometheus_client import CollectorRegistry, Counter

from pipeline.job import labels


def test_children_are_looked_up_once_and_count_on_the_metric(monkeypatch):
    metric = Counter("t_decided", "test", ["decision", "policy"], registry=CollectorRegistry())
    calls = []
    real = metric.labels
    monkeypatch.setattr(metric, "labels", lambda *v: calls.append(v) or real(*v))
    children = labels.Children(metric)
    for _ in range(3):
        children("keep", "errors").inc()
    children("drop", "-").inc(2)
    assert calls == [("keep", "errors"), ("drop", "-")]
    assert real("keep", "errors")._value.get() == 3 and real("drop", "-")._value.get() == 2


def test_the_cache_stops_growing_at_its_bound(monkeypatch):
    monkeypatch.setattr(labels, "MAX_CACHED", 2)
    metric = Counter("t_reasons", "test", ["reason"], registry=CollectorRegistry())
    children = labels.Children(metric)
    for r in ("a", "b", "c", "c"):
        children(r).inc()
    assert len(children._children) == 2 and metric.labels("c")._value.get() == 2
