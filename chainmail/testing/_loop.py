"""A trio loop in a background thread, so that the kit's blocking API works in any test:
a plain ``def`` test, a pytest-trio test, or a test on asyncio."""

from __future__ import annotations

import contextlib
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable

import trio

__all__ = ["TrioThread"]


class TrioThread:
    """Runs coroutines on its own trio loop.  ``asyncio_bridge`` opens a trio-asyncio loop
    too, for handlers declared ``runs_on = "asyncio"``."""

    def __init__(self, *, asyncio_bridge: bool = False, name: str = "chainmail-testing") -> None:
        self._asyncio = asyncio_bridge
        self._ready = threading.Event()
        # Set by the loop's thread before _ready: never None once the constructor returns.
        self._token: trio.lowlevel.TrioToken = None   # type: ignore[assignment]
        self._send: trio.MemorySendChannel = None     # type: ignore[assignment]
        self._stop: trio.Event = None                 # type: ignore[assignment]
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to the caller of start/call
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        if self._asyncio:
            import trio_asyncio
            async with trio_asyncio.open_loop():
                await self._run_nursery()
        else:
            await self._run_nursery()

    async def _run_nursery(self) -> None:
        # Tasks are spawned by this task, so that they inherit its context (the trio-asyncio
        # loop lives in a context variable); other threads hand them over through a channel.
        send, receive = trio.open_memory_channel(float("inf"))
        self._send = send
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_when_asked, nursery)
            self._ready.set()
            async for fn, args in receive:
                nursery.start_soon(fn, *args)

    async def _stop_when_asked(self, nursery: trio.Nursery) -> None:
        await self._stop.wait()
        nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any, timeout: float | None = 60.0) -> Any:
        """Run ``await fn(*args)`` on the loop and return its result (or raise its error)."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        async def run() -> None:
            try:
                future.set_result(await fn(*args))
            except BaseException as exc:
                future.set_exception(exc)

        self.start_soon(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"no answer within {timeout} s") from None

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start ``fn(*args)`` as a background task of the loop."""
        if not self._thread.is_alive():
            raise RuntimeError("the trio loop has stopped") from self._error
        self._token.run_sync_soon(self._send.send_nowait, (fn, args))

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what still runs and end the thread."""
        if self._thread.is_alive():
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._stop.set)
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error
