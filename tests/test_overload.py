"""Micro-batching and overload: results reach the right requests, batches form under
concurrency, a full queue answers 503 + Retry-After, a slow model answers 503 timeout, a burst
beyond the queue admits exactly the queue, and every accepted request gets the same answer it
gets alone."""

from __future__ import annotations

import asyncio
import re
import threading
import time

import httpx
import pytest

from app.batching import ModelBatcher
from app.errors import ApiError
from conftest import WEIGHTS_DIR
from testkit import drawn_digit, png_bytes


# -- the batcher on its own --------------------------------------------------------------------
class _Entry:
    name = "fake"


def _batcher(batch_fn, **kw) -> ModelBatcher:
    opts = dict(max_batch=4, max_wait_s=0.005, queue_size=100, timeout_s=5.0)
    opts.update(kw)
    return ModelBatcher("fake", _Entry(), batch_fn, **opts)


async def _one(batcher: ModelBatcher, item):
    async with batcher.admit() as slot:
        await asyncio.sleep(0)  # "preprocessing"
        return await slot.infer(item)


def test_concurrent_requests_share_batches_and_get_their_own_results():
    sizes = []

    def double(entry, items):
        time.sleep(0.02)  # a forward pass long enough for the others to queue up
        sizes.append(len(items))
        return [2 * i for i in items]

    async def main():
        batcher = _batcher(double)
        try:
            return await asyncio.gather(*(_one(batcher, i) for i in range(23)))
        finally:
            await batcher.close()

    assert asyncio.run(main()) == [2 * i for i in range(23)]
    assert sum(sizes) == 23 and max(sizes) <= 4
    assert max(sizes) > 1  # concurrency did form batches
    assert len(sizes) < 23


def test_a_lone_request_is_not_held_for_company():
    """Idle service: one request is sent on at once, as a batch of one, however long max_wait is."""
    sizes = []

    def ident(entry, items):
        sizes.append(len(items))
        return items

    async def main():
        batcher = _batcher(ident, max_wait_s=30.0)  # a wait would hit the 1 s time-out below
        try:
            return await asyncio.wait_for(_one(batcher, "x"), 1.0)
        finally:
            await batcher.close()

    assert asyncio.run(main()) == "x" and sizes == [1]


def test_full_queue_is_503_with_retry_after():
    async def main():
        batcher = _batcher(lambda e, items: items, queue_size=2)
        try:
            async with batcher.admit(), batcher.admit():
                with pytest.raises(ApiError) as err:
                    async with batcher.admit():
                        pass
            async with batcher.admit() as slot:  # slots are given back
                assert await slot.infer(1) == 1
            return err.value, batcher.stats.rejected["overloaded"]
        finally:
            await batcher.close()

    error, rejected = asyncio.run(main())
    assert error.status == 503 and error.code == "overloaded"
    assert int(error.headers["Retry-After"]) >= 1
    assert rejected == 1


def test_queued_request_times_out_with_503_running_one_is_answered():
    """The time-out bounds the wait in the queue: behind a slow forward pass a queued request gets
    503 timeout, while the request in that forward pass still gets its answer."""
    def slow(entry, items):
        time.sleep(0.3)
        return items

    async def main():
        batcher = _batcher(slow, max_batch=1, timeout_s=0.05)
        try:
            first = asyncio.ensure_future(_one(batcher, "running"))
            await asyncio.sleep(0.01)  # the first is in its forward pass now
            with pytest.raises(ApiError) as err:
                await _one(batcher, "queued")
            answered = await first
            return err.value, answered, await _one(batcher, "after"), batcher.stats.rejected["timeout"]
        finally:
            await batcher.close()

    error, answered, after, timeouts = asyncio.run(main())
    assert error.status == 503 and error.code == "timeout" and int(error.headers["Retry-After"]) >= 1
    assert answered == "running" and after == "after" and timeouts == 1


def test_a_failing_batch_fails_its_requests_not_the_worker():
    def flaky(entry, items):
        if "boom" in items:
            raise RuntimeError("model bug")
        return items

    async def main():
        batcher = _batcher(flaky, max_batch=1)
        try:
            with pytest.raises(RuntimeError):
                await _one(batcher, "boom")
            return await _one(batcher, "fine")
        finally:
            await batcher.close()

    assert asyncio.run(main()) == "fine"


# -- the service under more concurrent requests than its queue holds ----------------------------
class _Held:
    """Wraps a loaded model: the first forward pass waits for `release` (at most `hold_s`), so
    nothing admitted can finish while the burst arrives; records every batch's size."""

    def __init__(self, model, hold_s: float):
        self.model, self.hold_s = model, hold_s
        self.release = threading.Event()
        self.batches: list[int] = []

    def __call__(self, x, *args, **kwargs):
        self.release.wait(self.hold_s)
        self.release.set()  # held once at most
        self.batches.append(len(x))
        return self.model(x, *args, **kwargs)


def test_overload_admits_exactly_the_queue_and_answers_the_rest_503():
    """40 requests at once against a queue of 8 and batches of at most 3, the model held until the
    burst has been sorted: exactly 8 are admitted and answered as they are alone, in batches of
    <= 3 that hold each of them once; the other 32 get 503 overloaded + Retry-After, and /metrics
    counts exactly those 32."""
    from app.main import create_app
    from app.settings import Settings

    queue, batch, clients = 8, 3, 40
    settings = Settings(models_dir=WEIGHTS_DIR, device="cpu", queue_size=queue, batch_max_size=batch,
                        request_timeout_s=60, log_level="warning")
    app = create_app(settings)
    uploads = [png_bytes(drawn_digit(d, seed=d)) for d in range(10)]
    turned_away = []

    async def post(client, held, i):
        resp = await client.post("/predict/digit", files={"file": ("d.png", uploads[i % len(uploads)], "image/png")})
        if resp.status_code == 503:
            turned_away.append(i)
            if len(turned_away) == clients - queue:  # everyone beyond the queue has been answered
                held.release.set()
        return resp

    async def main():
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                # Each digit alone, on an idle server: the reference answers.
                alone = [(await client.post("/predict/digit", files={"file": ("d.png", u, "image/png")})).json()
                         for u in uploads]
                entry = app.state.registry.pick("digits", None)
                real = entry.model
                # Held long enough for a loaded machine; a queue that admits too many never releases
                # it, and the test fails (after this wait) on the count of accepted requests.
                held = entry.model = _Held(real, hold_s=20.0)
                try:
                    burst = await asyncio.gather(*(post(client, held, i) for i in range(clients)))
                finally:
                    entry.model = real
                ready = await client.get("/readyz")
                metrics = (await client.get("/metrics")).text
        return alone, burst, held.batches, ready, metrics, entry.name

    alone, burst, batches, ready, metrics, name = asyncio.run(main())
    statuses = [r.status_code for r in burst]
    assert set(statuses) <= {200, 503}, statuses
    rejected = [r for r in burst if r.status_code == 503]
    accepted = [(i, r) for i, r in enumerate(burst) if r.status_code == 200]
    assert len(accepted) == queue and len(rejected) == clients - queue, statuses
    assert batches and max(batches) <= batch, batches
    assert sum(batches) == len(accepted), batches  # each admitted request in one forward pass, no other
    for r in rejected:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    for i, r in accepted:
        ref = alone[i % len(uploads)]
        assert r.json()["digit"] == ref["digit"]
        assert r.json()["probabilities"] == pytest.approx(ref["probabilities"], abs=1e-4)  # batched == alone
    assert ready.status_code == 200
    line = rf'^rnnlab_rejected_total{{model="{re.escape(name)}",reason="overloaded"}} (\S+)$'
    counted = re.search(line, metrics, re.M)
    assert counted and float(counted.group(1)) == len(rejected), counted


def test_stalled_upload_gets_408_and_frees_its_slot():
    """A client that sends part of its body and stops (slow-loris) is cut off after the upload
    time-out with 408, and its queue slot is given back."""
    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(models_dir=WEIGHTS_DIR, device="cpu", upload_timeout_s=0.2, queue_size=1,
                              log_level="warning"))
    body = png_bytes(drawn_digit(3))

    async def main():
        async with app.router.lifespan_context(app):
            sent = []

            async def receive():
                if not sent:
                    sent.append(1)
                    return {"type": "http.request", "body": body[:100], "more_body": True}
                await asyncio.sleep(30)  # never finishes
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/predict/digit", "raw_path": b"/predict/digit", "query_string": b"",
                     "root_path": "", "headers": [(b"content-type", b"image/png"), (b"host", b"test")],
                     "client": ("127.0.0.1", 1), "server": ("test", 80)}
            await asyncio.wait_for(app(scope, receive, send), 10)
            status = next(m["status"] for m in sent[1:] if m["type"] == "http.response.start")
            payload = b"".join(m.get("body", b"") for m in sent[1:] if m["type"] == "http.response.body")
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
                after = await client.post("/predict/digit", files={"file": ("d.png", body, "image/png")})
            return status, payload, after.status_code

    status, payload, after = asyncio.run(main())
    assert status == 408 and b'"upload_timeout"' in payload
    assert after == 200  # the queue of 1 is free again
