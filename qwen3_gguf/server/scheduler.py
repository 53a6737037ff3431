"""The cross-request scheduler: one worker thread per model, fed by the event loop.

Requests are admitted as jobs (their inputs, a grouping key, their token count) into a queue
bounded in tokens. The worker drains everything waiting (up to `max_batch_tokens` a round),
groups the jobs by key (inputs that can share one engine call: same instruction, dimension,
...), makes one engine call per group on the combined inputs and hands each job exactly its
own slice of the results, in order. A job whose client went away before its round started is
dropped without being decoded. The event loop only waits on asyncio futures; it never decodes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("qwen3_gguf.server")

# Retry-After for a refused request: the time to work off the queue at the measured rate,
# within these bounds (seconds).
MIN_RETRY_AFTER = 1
MAX_RETRY_AFTER = 60


class QueueFull(Exception):
    """The request's tokens do not fit in the queue now; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int):
        super().__init__(f"retry after {retry_after} s")
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The server is draining and takes no new work."""


@dataclass(eq=False)
class Job:
    key: Hashable
    inputs: list
    n_tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False  # set from the event loop when the client goes away


@dataclass
class SchedulerStats:
    """Counts the metrics read, updated by the worker."""

    on_round: Callable[[int, int], None] = lambda n_inputs, n_tokens: None     # one engine call
    on_dropped: Callable[[int], None] = lambda n_inputs: None                  # inputs never decoded
    on_queue: Callable[[int], None] = lambda queued_tokens: None


@dataclass
class Scheduler:
    """Runs `run_group(key, inputs) -> results` on a thread of its own, one call per group."""

    name: str
    run_group: Callable[[Hashable, list], Sequence]
    max_batch_tokens: int
    max_queue_tokens: int
    stats: SchedulerStats = field(default_factory=SchedulerStats)

    def __post_init__(self):
        self._cond = threading.Condition()
        self._waiting: list[Job] = []
        self._queued_tokens = 0      # admitted and not yet finished (waiting or being decoded)
        self._tokens_per_second = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._work, name=f"qwen3-gguf-{self.name}", daemon=True)
        self._thread.start()

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    async def run(self, key: Hashable, inputs: list, n_tokens: int) -> list:
        """The results for `inputs`, computed with whatever else is waiting under the same key.

        Raises QueueFull when the tokens do not fit now, ShuttingDown when draining. Cancelling
        the awaiting task (a client that disconnected) drops the inputs if they were not started.
        """
        loop = asyncio.get_running_loop()
        job = Job(key, list(inputs), n_tokens, loop.create_future(), loop)
        with self._cond:
            if self._stopping:
                raise ShuttingDown()
            if self._queued_tokens + n_tokens > self.max_queue_tokens:
                raise QueueFull(self._retry_after())
            self._queued_tokens += n_tokens
            self._waiting.append(job)
            self.stats.on_queue(self._queued_tokens)
            self._cond.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancelled = True
            raise

    def stop(self, timeout: float | None = None) -> bool:
        """Finish what was admitted, then end the worker; False if it is still busy after `timeout` s."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _retry_after(self) -> int:
        if self._tokens_per_second <= 0:
            return MIN_RETRY_AFTER
        seconds = math.ceil(self._queued_tokens / self._tokens_per_second)
        return max(MIN_RETRY_AFTER, min(MAX_RETRY_AFTER, seconds))

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if not self._waiting:
                    return
                round_jobs = self._take_round()
            groups: dict[Hashable, list[Job]] = {}
            for job in round_jobs:
                groups.setdefault(job.key, []).append(job)
            for key, jobs in groups.items():
                self._run(key, jobs)

    def _take_round(self) -> list[Job]:
        """The waiting jobs, oldest first, up to max_batch_tokens (always at least one)."""
        taken, tokens = [], 0
        while self._waiting:
            job = self._waiting[0]
            if taken and tokens + job.n_tokens > self.max_batch_tokens:
                break
            self._waiting.pop(0)
            taken.append(job)
            tokens += job.n_tokens
        return taken

    def _run(self, key: Hashable, jobs: list[Job]) -> None:
        live = [job for job in jobs if not job.cancelled]
        dropped = [job for job in jobs if job.cancelled]
        if dropped:
            self.stats.on_dropped(sum(len(job.inputs) for job in dropped))
        results, failure = [], None
        if live:
            inputs = [item for job in live for item in job.inputs]
            n_tokens = sum(job.n_tokens for job in live)
            started = time.perf_counter()
            try:
                results = self.run_group(key, inputs)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting requests
                log.exception("%s: engine call failed", self.name)
                failure = exc
            else:
                rate = n_tokens / max(time.perf_counter() - started, 1e-6)
                self._tokens_per_second = rate if not self._tokens_per_second else (
                    0.7 * self._tokens_per_second + 0.3 * rate)
                self.stats.on_round(len(inputs), n_tokens)
        # The tokens leave the queue before anyone hears back: a retry right after must fit.
        with self._cond:
            self._queued_tokens -= sum(job.n_tokens for job in jobs)
            self.stats.on_queue(self._queued_tokens)
        start = 0
        for job in live:
            if failure is not None:
                _resolve(job, exc=failure)
            else:
                _resolve(job, result=list(results[start:start + len(job.inputs)]))
            start += len(job.inputs)


def _resolve(job: Job, *, result=None, exc: BaseException | None = None) -> None:
    def settle():
        if job.future.done():
            return
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(result)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass
