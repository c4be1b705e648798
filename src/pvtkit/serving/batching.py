"""Dynamic batching: concurrent requests' images gathered into one forward pass.

A request's images join a bounded queue; one asyncio task takes the oldest image, waits until `max_batch_size`
images of its shape are waiting or `max_delay_s` has passed since it arrived (whichever comes first), and runs the
model on them in one dedicated thread, so the event loop keeps accepting and decoding while the model runs. While
a batch runs the next one gathers, so under load batches fill without waiting for the delay.

Overload is bounded: a full queue refuses new images at once (`Overloaded`, the server's 503 with `Retry-After`);
an image whose request's deadline passes while it waits is dropped from the queue (`DeadlineExceeded`, 504).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Overloaded(Exception):
    """The queue is full: the request is refused (before its images are decoded, when the model checks first)."""

    def __init__(self, queued: int, retry_after_s: float) -> None:
        super().__init__(
            f"server busy: {queued} images are already waiting (--max-queue); retry in {retry_after_s:g} s"
        )
        self.retry_after_s = retry_after_s


class DeadlineExceeded(Exception):
    """The request's deadline (--timeout-s) passed before its answer was ready."""


@dataclass(eq=False, repr=False)
class _Item:
    pixels: np.ndarray  # (C, H, W), the model's dtype-independent float32 input
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)
    # repr=False: deque.remove's "not in deque" error formats the item, which must never print its pixels


class DynamicBatcher:
    """Gathers single images into batches for `run`.

    Args:
        run: `(N, C, H, W) float32 array -> N per-image results`; called in one worker thread, never concurrently.
        max_batch_size: The most images per forward pass (1: no batching).
        max_delay_s: How long the oldest waiting image may wait for others before its batch runs.
        max_queue: The most images waiting (not yet in a forward pass); beyond it `submit` raises `Overloaded`.
        on_batch: Called with each batch's size (metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], Sequence[Any]],
        max_batch_size: int = 8,
        max_delay_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if max_delay_s < 0:
            raise ValueError(f"max_delay_s must be 0 or more, got {max_delay_s}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be at least 1, got {max_queue}")
        self.run, self.max_batch_size, self.max_delay_s, self.max_queue = run, max_batch_size, max_delay_s, max_queue
        self.on_batch = on_batch
        self._waiting: collections.deque[_Item] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="pvtkit-forward")
        self._busy = 0.0  # seconds the last batch took: what a refused client is told to wait, roughly
        self._in_flight = 0

    @property
    def depth(self) -> int:
        """Images waiting for a forward pass."""
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        return not self._waiting and not self._in_flight

    def start(self) -> None:
        """Start the gathering task on the running event loop."""
        if self._task is None:
            self._arrived = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._gather_forever(), name="pvtkit-batcher")

    async def submit(self, pixels: np.ndarray, deadline: float | None = None) -> Any:
        """Queue one `(C, H, W)` image; its result, once its batch has run. `deadline`: a `time.monotonic()` time."""
        if self._task is None:
            self.start()
        if len(self._waiting) >= self.max_queue:
            raise Overloaded(len(self._waiting), retry_after_s=max(1.0, round(self._busy * 2, 1)))
        item = _Item(pixels, asyncio.get_running_loop().create_future())
        self._waiting.append(item)
        self._arrived.set()  # type: ignore[union-attr]
        timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            return await asyncio.wait_for(item.future, timeout)
        except asyncio.TimeoutError:
            raise DeadlineExceeded("the request's deadline passed before its image was processed") from None
        finally:
            if not item.future.done():  # timed out or cancelled: never run it
                item.future.cancel()
            try:
                self._waiting.remove(item)  # still waiting (timed out or cancelled); a taken item is gone already
            except ValueError:
                pass

    def _take_batch(self) -> list[_Item]:
        """The oldest live image and up to `max_batch_size - 1` more of its shape, in arrival order."""
        while self._waiting and self._waiting[0].future.done():
            self._waiting.popleft()
        if not self._waiting:
            return []
        shape = self._waiting[0].pixels.shape
        batch = [item for item in self._waiting if item.pixels.shape == shape and not item.future.done()]
        batch = batch[: self.max_batch_size]
        for item in batch:
            self._waiting.remove(item)
        return batch

    def _ready_count(self) -> int:
        shape = self._waiting[0].pixels.shape
        return sum(1 for item in self._waiting if item.pixels.shape == shape and not item.future.done())

    async def _gather_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._arrived.clear()  # type: ignore[union-attr]
                await self._arrived.wait()  # type: ignore[union-attr]
            oldest = self._waiting[0]
            # Wait for company until the batch is full or the oldest has waited max_delay_s.
            while self._waiting and self._ready_count() < self.max_batch_size:
                left = oldest.arrived + self.max_delay_s - time.monotonic()
                if left <= 0 or oldest.future.done():
                    break
                self._arrived.clear()  # type: ignore[union-attr]
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)  # type: ignore[union-attr]
                except asyncio.TimeoutError:
                    break
            batch = self._take_batch()
            if not batch:
                continue
            self._in_flight = len(batch)
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._thread, self.run, np.stack([i.pixels for i in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"the model returned {len(results)} results for a batch of {len(batch)}")
            except Exception as error:  # the model failed: every image of the batch gets the error
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(error)
            else:
                for item, result in zip(batch, results):
                    if not item.future.done():
                        item.future.set_result(result)
            finally:
                self._in_flight = 0
                self._busy = time.monotonic() - started
            if self.on_batch is not None:
                self.on_batch(len(batch))

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Wait (up to `timeout_s`) until nothing waits or runs."""
        end = time.monotonic() + timeout_s
        while not self.idle and time.monotonic() < end:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        """Stop gathering (after `drain`); the worker thread is released."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._thread.shutdown(wait=True)
