"""Micro-batching and admission control in front of the models.

One `ModelBatcher` per (model, batch function). A request goes through it in two steps:

    async with batcher.admit() as slot:  # 503 + Retry-After when `queue_size` requests are already in
        x = await preprocess(...)        # decode + preprocess in the threadpool, (1, 28, 28) say
        result = await slot.infer(x)     # joins the next forward pass; 503 after `request_timeout_s`

`admit` bounds everything a model has in flight (requests still decoding, waiting for a batch, or
in the forward pass), so under overload the service answers 503 at once instead of letting every
request's latency grow with the backlog, and decoded images cannot pile up in memory.

`infer` puts the item on the model's queue. One worker task per model takes what is queued (up
to `batch_max_size`) and runs the batch function in the model's own thread, off the event loop.
It waits up to `batch_max_wait_ms` for a batch to fill only while other admitted requests are
still preprocessing (so more items are on their way); an idle service sends a lone request
straight to the model, with no added wait. Under load, items that arrive while a batch runs form
the next batch, so batches grow with the load by themselves.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

import torch

from app.errors import ApiError

log = logging.getLogger("rnnlab")

In = TypeVar("In")
Out = TypeVar("Out")

# A batch function takes the registry entry (LoadedModel) and a list of items (one per request) and returns one result
# per item, in order. It runs in the model's worker thread under torch.inference_mode().
BatchFn = Callable[[Any, list[In]], Sequence[Out]]


@dataclass
class _Job(Generic[In, Out]):
    item: In
    future: asyncio.Future
    queued_at: float
    started: bool = False  # taken into a forward pass


@dataclass
class BatcherStats:
    """What /metrics reports per model; updated only on the event loop."""
    batches: int = 0
    items: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: {"overloaded": 0, "timeout": 0})


class ModelBatcher(Generic[In, Out]):
    def __init__(self, name: str, model: Any, batch_fn: BatchFn, *, max_batch: int, max_wait_s: float,
                 queue_size: int, timeout_s: float, observe: Callable[[str, int, float], None] | None = None):
        self.name = name
        self.model = model
        self.batch_fn = batch_fn
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max(0.0, max_wait_s)
        self.queue_size = max(1, queue_size)
        self.timeout_s = timeout_s
        self.observe = observe  # (model name, batch size, seconds) after each forward pass
        self.stats = BatcherStats()
        self.admitted = 0  # requests inside admit(): preprocessing, queued or in the forward pass
        self.running = 0  # items in the forward pass now
        self.preparing = 0  # admitted requests that have not reached infer() yet
        self._queue: deque[_Job] = deque()
        self._arrived = asyncio.Event()
        self._batch_seconds = 0.0  # moving average of one forward pass, for Retry-After
        # One thread per model: its forward passes run one after another (a batch uses torch's
        # intra-op threads), and the event loop never blocks on them.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"infer-{name}")
        self._worker: asyncio.Task | None = None

    # -- request side ------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        """Items waiting for a forward pass."""
        return len(self._queue)

    def retry_after(self) -> int:
        """Seconds until the backlog has likely drained: batches ahead x time per batch, >= 1."""
        batches_ahead = math.ceil(max(self.admitted, 1) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    @asynccontextmanager
    async def admit(self):
        """A slot for one request, or 503 `overloaded` with Retry-After when none is free."""
        if self.admitted >= self.queue_size:
            self.stats.rejected["overloaded"] += 1
            raise ApiError(503, "overloaded",
                           f"model {self.name!r} already has {self.admitted} requests in flight (queue limit "
                           f"{self.queue_size}); retry shortly", headers={"Retry-After": str(self.retry_after())})
        slot = _Slot(self)
        self.admitted += 1
        self.preparing += 1
        try:
            yield slot
        finally:
            self.admitted -= 1
            if not slot.submitted:
                self.preparing -= 1

    async def _infer(self, item: In) -> Out:
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name=f"batcher-{self.name}")
        job = _Job(item, loop.create_future(), loop.time())
        self._queue.append(job)
        self._arrived.set()
        try:
            # shield: a timeout must not cancel the future the worker will still resolve.
            return await asyncio.wait_for(asyncio.shield(job.future), self.timeout_s)
        except TimeoutError:
            if job.started:
                # The time-out bounds the wait in the queue. A forward pass already under way
                # takes milliseconds and cannot be interrupted: its answer is worth the wait.
                return await job.future
            job.future.cancel()  # still queued: the worker will skip it
            self.stats.rejected["timeout"] += 1
            raise ApiError(503, "timeout",
                           f"model {self.name!r} did not answer within {self.timeout_s:g} s; the server is busy, "
                           "retry shortly", headers={"Retry-After": str(self.retry_after())}) from None

    # -- worker side -------------------------------------------------------------------------
    def _take(self, batch: list[_Job], limit: int) -> None:
        while self._queue and len(batch) < limit:
            job = self._queue.popleft()
            if not job.future.done():  # timed-out jobs were cancelled: drop them
                batch.append(job)

    def _more_on_the_way(self) -> bool:
        """Admitted requests still preprocessing will join soon: worth a short wait."""
        return self.preparing > 0

    def _forward(self, items: list[In]) -> Sequence[Out]:
        with torch.inference_mode():
            return self.batch_fn(self.model, items)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            batch: list[_Job] = []
            self._take(batch, self.max_batch)
            if self.max_wait_s and len(batch) < self.max_batch and self._more_on_the_way():
                deadline = loop.time() + self.max_wait_s
                while len(batch) < self.max_batch and self._more_on_the_way():
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._arrived.clear()
                    try:
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                    self._take(batch, self.max_batch)
            if not batch:
                continue
            for job in batch:
                job.started = True
            self.running = len(batch)
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._forward, [j.item for j in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            except Exception as exc:  # a bug in the model code: every waiting request sees it (500)
                log.exception("batch of %d on %s failed", len(batch), self.name)
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(exc)
            else:
                for job, result in zip(batch, results):
                    if not job.future.done():
                        job.future.set_result(result)
            finally:
                seconds = time.perf_counter() - started
                self.running = 0
                self.stats.batches += 1
                self.stats.items += len(batch)
                self._batch_seconds = seconds if not self._batch_seconds else 0.8 * self._batch_seconds + 0.2 * seconds
                if self.observe:
                    self.observe(self.name, len(batch), seconds)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(ApiError(503, "shutting_down", "the server is shutting down",
                                                  headers={"Retry-After": "5"}))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)


class _Slot:
    """One admitted request's handle on its batcher."""

    def __init__(self, batcher: ModelBatcher):
        self.batcher, self.submitted = batcher, False

    async def infer(self, item):
        """The model's result for `item`, computed in one batch with whatever else is queued."""
        if self.submitted:
            raise RuntimeError("one infer() per admitted request")
        self.submitted = True
        self.batcher.preparing -= 1
        return await self.batcher._infer(item)


def effective_cpus() -> int:
    """CPUs this process may really use: the affinity mask, capped by a cgroup v2 CPU quota
    (a container's `cpus:` limit). os.cpu_count() reports the host's CPUs, which inside a
    2-CPU container on a 64-core host would oversubscribe the quota 32 times."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_torch_threads() -> int:
    """Intra-op threads for the forward passes when settings.torch_threads is 0: half the CPUs
    (at least 1, at most 4). Each model's batches run in one thread at a time, and the other
    CPUs decode uploads and run the event loop; small recurrent nets gain little past 4."""
    return max(1, min(4, effective_cpus() // 2))


class BatchingPool:
    """The batchers of one running app (app.state.batching), created on first use per model."""

    def __init__(self, settings, observe: Callable[[str, int, float], None] | None = None):
        self.settings = settings
        self.observe = observe
        self.batchers: dict[tuple[str, str], ModelBatcher] = {}
        self._items_retired = 0  # items through batchers retired after a model change
        self._retiring: set[asyncio.Task] = set()
        # Decoding a 40-megapixel upload takes ~160 MB for a moment: run at most this many at once.
        # Twice the CPUs: PNG/JPEG decoding and numpy release the GIL, so two threads per CPU
        # overlap better (measured: docs/serving.md). A plain executor rather than anyio's
        # to_thread: its cancel scopes and limiter cost the event loop ~10% of a digit request.
        threads = settings.preprocess_threads or 2 * effective_cpus()
        self._preprocess = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="preprocess")

    async def preprocess(self, fn: Callable[..., Out], *args) -> Out:
        """fn(*args) in a worker thread, at most `preprocess_threads` at once, in a copy of the
        caller's context (so log lines carry the request id)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._preprocess, context.run, fn, *args)

    def for_model(self, name: str, target, batch_fn: BatchFn) -> ModelBatcher:
        """The batcher running `batch_fn` on `target` (a registry LoadedModel, or what a route
        batches over), made on first use; `name` labels its metrics."""
        key = (name, f"{batch_fn.__module__}.{batch_fn.__qualname__}")
        batcher = self.batchers.get(key)
        if batcher is None:
            s = self.settings
            batcher = self.batchers[key] = ModelBatcher(
                name, target, batch_fn, max_batch=s.batch_max_size, max_wait_s=s.batch_max_wait_ms / 1000,
                queue_size=s.queue_size, timeout_s=s.request_timeout_s, observe=self.observe)
        return batcher

    def retire_all(self, grace_s: float | None = None) -> None:
        """The models changed (app/registry.py `watch`): later requests get new batchers on the
        new models; the old ones finish what they hold and close after `grace_s` (default: the
        request timeout plus a second)."""
        old, self.batchers = list(self.batchers.values()), {}
        self._items_retired += sum(b.stats.items for b in old)
        delay = self.settings.request_timeout_s + 1.0 if grace_s is None else grace_s

        async def close_later() -> None:
            await asyncio.sleep(delay)
            for batcher in old:
                await batcher.close()

        task = asyncio.get_running_loop().create_task(close_later(), name="retire-batchers")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def items_done(self) -> int:
        """Items through every batcher so far (a counter of work, for app/memory.py)."""
        return self._items_retired + sum(b.stats.items for b in self.batchers.values())

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for batcher in self.batchers.values():
            await batcher.close()
        self._preprocess.shutdown(wait=False, cancel_futures=True)


def stack_batch(items: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Per-request tensors (1, ...) of one shape -> one batch (B, ...) on `device`."""
    return torch.cat(items, dim=0).to(device, non_blocking=True)
