"""An asyncio event loop in a daemon thread, driven from trio: aiortc (asyncio) runs in it, corelog on trio.

An :class:`AsyncioThread` owns one asyncio event loop in a daemon thread. Trio
calls into it with :meth:`AsyncioThread.call`, which schedules the work with
``loop.call_soon_threadsafe`` and is woken back through
``TrioToken.run_sync_soon`` (no worker thread per call); cancelling the trio side
cancels the asyncio task and waits for it to finish. By default every WebRTC
stream shares one thread (:data:`shared_thread`), started on the first
``connect_webrtc`` and stopped when the last stream is closed.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio


class AsyncioThread:
    """One asyncio event loop in a daemon thread, driven from trio.

    Started lazily (by :meth:`start` or the first :meth:`call`), stopped by
    :meth:`aclose` (from trio) or :meth:`close` (blocking); also an async and a
    plain context manager. Stopping cancels the tasks still running in it.
    """

    def __init__(self, name: str = "corelog-asyncio"):
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._on_exit: Callable[[], None] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop (starting the thread if needed)."""
        return self.start()

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            return self._start_locked()

    def _start_locked(self) -> asyncio.AbstractEventLoop:
        if self._closing:
            raise trio.ClosedResourceError(f"the asyncio thread {self.name!r} is closed")
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(loop, ready), name=self.name, daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
        return self._loop

    def _run(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
            loop.run_until_complete(_drain(loop))
        finally:
            loop.close()
            on_exit = self._on_exit
            if on_exit is not None:
                on_exit()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in the asyncio thread, without waiting (dropped if the thread is closed)."""
        with self._lock:
            if self._loop is None or self._closing:
                return
            try:
                self._loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop is closed
                pass

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` in the asyncio thread and return its result to trio.

        ``fn`` is a coroutine function (run as an asyncio task) or a plain
        function (run as a callback). Trio is not blocked while waiting. If the
        calling trio task is cancelled, the asyncio task is cancelled and waited
        for before ``trio.Cancelled`` propagates.
        """
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[outcome.Outcome] = []
        tasks: list[asyncio.Future] = []

        def deliver(result: outcome.Outcome) -> None:  # trio thread
            box.append(result)
            done.set()

        def post(result: outcome.Outcome) -> None:  # asyncio thread
            try:
                token.run_sync_soon(deliver, result)
            except trio.RunFinishedError:
                pass

        def finished(task: asyncio.Future) -> None:  # asyncio thread
            if task.cancelled():
                post(
                    outcome.Error(
                        trio.ClosedResourceError(f"the asyncio task in {self.name!r} was cancelled")
                    )
                )
            else:
                post(outcome.capture(task.result))

        def start() -> None:  # asyncio thread
            try:
                result = fn(*args)
            except BaseException as exc:
                post(outcome.Error(exc))
                return
            if not inspect.isawaitable(result):
                post(outcome.Value(result))
                return
            task = asyncio.ensure_future(result)
            tasks.append(task)
            task.add_done_callback(finished)

        def cancel() -> None:  # asyncio thread, always after start() (FIFO)
            for task in tasks:
                task.cancel()

        with self._lock:
            loop = self._start_locked()
            loop.call_soon_threadsafe(start)
        try:
            await done.wait()
        except BaseException:
            try:
                loop.call_soon_threadsafe(cancel)
            except RuntimeError:  # the loop is already closed; the task was cancelled by the shutdown
                pass
            with trio.CancelScope(shield=True):
                await done.wait()
            raise
        return box[0].unwrap()

    async def aclose(self) -> None:
        """Stop the loop (cancelling what still runs in it) and wait for the thread to exit."""
        with self._lock:
            if self._closing:
                thread = None
            else:
                self._closing = True
                thread, loop = self._thread, self._loop
        if thread is None:
            await trio.lowlevel.checkpoint()
            return
        token = trio.lowlevel.current_trio_token()
        exited = trio.Event()

        def on_exit() -> None:
            try:
                token.run_sync_soon(exited.set)
            except trio.RunFinishedError:
                pass

        self._on_exit = on_exit
        assert loop is not None
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            exited.set()
        if not thread.is_alive():
            exited.set()
        with trio.CancelScope(shield=True):
            await exited.wait()
        thread.join()

    def close(self, timeout: float | None = 10.0) -> None:
        """Blocking version of :meth:`aclose`, for use outside trio."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(loop.stop)
        except RuntimeError:
            pass
        thread.join(timeout)

    async def __aenter__(self) -> AsyncioThread:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __enter__(self) -> AsyncioThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def _drain(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel and await what is left in the loop (tasks may spawn more while cancelled)."""
    for _ in range(5):
        tasks = [t for t in asyncio.all_tasks(loop) if t is not asyncio.current_task()]
        if not tasks:
            break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


class _SharedThread:
    """The AsyncioThread streams share by default: started on first use, stopped with the last stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: AsyncioThread | None = None
        self._refs = 0

    def acquire(self) -> AsyncioThread:
        with self._lock:
            if self._thread is None:
                self._thread = AsyncioThread("corelog-asyncio")
            self._refs += 1
            return self._thread

    async def release(self, thread: AsyncioThread) -> None:
        with self._lock:
            last = self._thread is thread and self._refs == 1
            if self._thread is thread:
                self._refs -= 1
            if last:
                self._thread = None
        if last:
            await thread.aclose()


shared_thread = _SharedThread()
