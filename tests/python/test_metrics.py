"""`/metrics` parsed by the reference Prometheus text parser (prometheus_client)."""

import time

import requests
from prometheus_client.parser import text_string_to_metric_families
from requests.exceptions import Timeout


def scrape(base):
    r = requests.get(f"{base}/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def value(families, family, sample_name, **labels):
    """The value of the one sample of `family` named `sample_name` with exactly `labels`."""
    found = [
        s.value
        for s in families[family].samples
        if s.name == sample_name and s.labels == labels
    ]
    assert len(found) == 1, (family, sample_name, labels, families[family].samples)
    return found[0]


def test_counter_metrics_parse(example):
    ex = example("counter")
    for _ in range(3):
        assert requests.get(f"{ex.base}/?a=b").json() == {"a": "b"}
    families = scrape(ex.base)
    route = dict(route="/", method="GET", application="default")
    assert families["serve_num_http_requests"].type == "counter"
    assert value(families, "serve_num_http_requests", "serve_num_http_requests_total",
                 status_code="200", **route) == 3
    latency = families["serve_http_request_latency_ms"]
    assert latency.type == "histogram"
    assert value(families, "serve_http_request_latency_ms", "serve_http_request_latency_ms_count",
                 **route) == 3
    assert value(families, "serve_http_request_latency_ms", "serve_http_request_latency_ms_bucket",
                 le="+Inf", **route) == 3
    dep = dict(deployment="Counter", application="default")
    assert value(families, "serve_deployment_request_counter",
                 "serve_deployment_request_counter_total", **dep) == 3
    assert value(families, "serve_deployment_replicas", "serve_deployment_replicas",
                 state="RUNNING", **dep) == 1
    assert value(families, "serve_deployment_queued_queries", "serve_deployment_queued_queries",
                 **dep) == 0
    ex.stop()


def test_disconnects_count_as_499_and_proxy_paths_do_not_count(example):
    ex = example("disconnect")
    assert requests.get(f"{ex.base}/-/nothing").status_code == 404
    try:
        requests.get(ex.base, timeout=0.5)
        raise AssertionError("the request should time out")
    except Timeout:
        pass
    assert ex.next_line()[1] == "Replica received request!"
    assert ex.next_line()[1] == "Request got cancelled!"
    # The proxy records the 499 as it drops the request, right after the cancellation line.
    deadline = time.monotonic() + 10
    while True:
        families = scrape(ex.base)
        samples = families["serve_num_http_requests"].samples
        if any(s.labels.get("status_code") == "499" for s in samples):
            break
        assert time.monotonic() < deadline, samples
        time.sleep(0.01)
    route = dict(route="/", method="GET", application="default")
    assert value(families, "serve_num_http_requests", "serve_num_http_requests_total",
                 status_code="499", **route) == 1
    assert value(families, "serve_num_http_error_requests",
                 "serve_num_http_error_requests_total", error_code="499", **route) == 1
    assert value(families, "serve_num_ongoing_http_requests", "serve_num_ongoing_http_requests",
                 route="/", application="default") == 0
    # `/-/...` and the scrapes are the proxy's own paths, not requests of an application.
    assert not any(s.labels.get("status_code") in ("404", "200") for s in samples), samples
    ex.stop()
