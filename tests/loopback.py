"""A loopback aiohttp server run in a background thread: the start/stop plumbing the test servers share."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from typing import Self

from aiohttp import web


class LoopbackServer:
    """Subclasses set `host`, `port` (0 = any free one) and their state in __init__ (calling super().__init__())
    and define `app()`; this serves it on 127.0.0.1 from an event loop in a daemon thread."""

    backlog = 512

    def __init__(self) -> None:
        self.host, self.port = "127.0.0.1", 0
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def app(self) -> web.Application:
        raise NotImplementedError

    async def _serve(self) -> None:
        """Bind the app and set `self.port` to the port it got."""
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=self.backlog, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> Self:
        if self._thread is not None:
            return self
        name = type(self).__name__
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            self._thread.join(5)
            self._thread = None
            raise RuntimeError(f"{name} failed to start: {self._start_error}") from self._start_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def serve_until_stopped(self, *notes: str) -> None:
        """Script mode: start, print `URL ...` and the notes (`{url}` filled in), serve until SIGTERM or Ctrl-C."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        self.start()
        print(f"URL {self.url}", flush=True)
        for note in notes:
            print(note.replace("{url}", self.url), flush=True)
        try:
            while not stop.wait(3600):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._start_error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()
