"""GET /metrics (Prometheus text format), X-Request-ID, JSON log lines."""

from __future__ import annotations

import io
import json
import logging
import os
import re

import pytest

from prometheus_client.parser import text_string_to_metric_families

from app.observability import JsonFormatter, request_id_var
from testkit import drawn_digit, png_bytes


def scrape(client) -> dict[str, float]:
    """{'name{label="v",...}': value} for every sample /metrics serves."""
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def test_metrics_count_requests_by_route_template_and_status(client):
    before = scrape(client)
    ok = client.post("/predict/digit", files={"file": ("d.png", png_bytes(drawn_digit(4)), "image/png")})
    assert ok.status_code == 200
    bad = client.post("/predict/digit", content=b"nope", headers={"content-type": "image/png"})
    assert bad.status_code == 415
    assert client.get("/no/such/page/12345").status_code == 404
    after = scrape(client)

    def delta(key):
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('rnnlab_http_requests_total{method="POST",route="/predict/digit",status="200"}') == 1
    assert delta('rnnlab_http_requests_total{method="POST",route="/predict/digit",status="415"}') == 1
    # Unknown paths share one label: a scanner cannot blow up the metric's cardinality.
    assert delta('rnnlab_http_requests_total{method="GET",route="unmatched",status="404"}') == 1
    assert not [k for k in after if "12345" in k]
    assert delta('rnnlab_http_request_duration_seconds_count{method="POST",route="/predict/digit"}') == 2
    model = client.app.state.registry.pick("digits", None).name
    # One forward pass for the one image that decoded; the invalid one never reached the model.
    assert delta(f'rnnlab_batch_size_count{{model="{model}"}}') == 1
    assert delta(f'rnnlab_batch_size_sum{{model="{model}"}}') == 1
    assert delta(f'rnnlab_inference_seconds_count{{model="{model}"}}') == 1
    assert after[f'rnnlab_queue_depth{{model="{model}"}}'] == 0
    assert after[f'rnnlab_requests_admitted{{model="{model}"}}'] == 0
    assert after[f'rnnlab_queue_limit{{model="{model}"}}'] == client.app.state.settings.queue_size
    assert after['rnnlab_models_loaded{task="digits"}'] >= 1


def test_request_id_is_made_echoed_or_replaced(client):
    made = client.get("/healthz").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert client.get("/healthz").headers["x-request-id"] != made
    assert client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.42"}).headers["x-request-id"] == "lb-7f3a.42"
    # Not a sane token (log injection, huge): replaced, not echoed.
    for hostile in ("a b\r\nSet-Cookie: x=1".replace("\r\n", " "), "x" * 500, "<script>"):
        echoed = client.get("/healthz", headers={"X-Request-ID": hostile}).headers["x-request-id"]
        assert echoed != hostile and re.fullmatch(r"[0-9a-f]{32}", echoed)
    # Errors carry it too.
    assert client.get("/no/such/page").headers["x-request-id"]


def test_access_log_is_one_json_line_with_the_request_id(client):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    access = logging.getLogger("rnnlab.access")
    access.addHandler(handler)
    old_level = access.level
    access.setLevel(logging.INFO)
    try:
        client.post("/predict/digit?model=nosuch", headers={"X-Request-ID": "trace-123"},
                    files={"file": ("d.png", b"x", "image/png")})
    finally:
        access.removeHandler(handler)
        access.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    entry = next(e for e in lines if e.get("request_id") == "trace-123")
    assert entry["route"] == "/predict/digit" and entry["status"] == 422 and entry["method"] == "POST"
    assert entry["level"] == "info" and entry["logger"] == "rnnlab.access" and entry["duration_ms"] >= 0


def test_json_formatter_keeps_extras_and_exceptions():
    token = request_id_var.set("rid-9")
    try:
        try:
            raise ValueError("bad pixel")
        except ValueError:
            record = logging.getLogger("rnnlab").makeRecord("rnnlab", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                                            exc_info=__import__("sys").exc_info(),
                                                            extra={"model": "digits_gru"})
        entry = json.loads(JsonFormatter().format(record))
    finally:
        request_id_var.reset(token)
    assert entry["message"] == "failed x" and entry["level"] == "error" and entry["request_id"] == "rid-9"
    assert entry["model"] == "digits_gru" and "ValueError: bad pixel" in entry["exception"]


def test_made_request_ids_are_unique_within_and_across_forked_processes():
    from app import observability

    ids = {observability._new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only makes an id and leaves
        os.write(write, observability._new_request_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read), os.close(write)
    assert re.fullmatch(r"[0-9a-f]{32}", child) and child[:20] != observability._new_request_id()[:20]


def test_uvicorns_access_logger_never_adds_a_second_line(capsys):
    """The app writes one access line per request; uvicorn's own access logger (configured as
    uvicorn does it, with its handler) must stay silent after configure_logging, even if the
    server runs without --no-access-log."""
    import logging

    from app.observability import configure_logging

    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.addHandler(logging.StreamHandler())  # what uvicorn's default log config installs
    uvicorn_access.propagate = False
    configure_logging("info", "json")
    uvicorn_access.info('127.0.0.1:5 - "GET /healthz HTTP/1.1" 200')
    assert "GET /healthz" not in capsys.readouterr().err


def test_every_line_the_service_writes_is_json_from_the_first(tmp_path):
    """From `Started server process` on, through start-up, requests and shutdown: one JSON
    object per line (docs/serving.md), for one worker and for the supervisor with two."""
    import json
    import urllib.request

    from testkit import running_service

    for workers in ("1", "2"):
        log = tmp_path / f"serve-{workers}.log"
        with running_service({"RNNLAB_DEVICE": "cpu", "RNNLAB_LOG_FORMAT": "json"}, ["--workers", workers],
                             log_path=log) as service:
            urllib.request.urlopen(service.url + "/healthz").read()
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        messages = []
        for line in lines:
            try:
                messages.append(json.loads(line)["message"])
            except (ValueError, KeyError):
                pytest.fail(f"{workers} worker(s): not a JSON log line: {line!r}")
        assert any("Started server process" in m for m in messages), messages[:5]
        assert any("Application startup complete" in m for m in messages)
        assert sum(m == "GET /healthz 200" for m in messages) == 1  # one access line, not two
