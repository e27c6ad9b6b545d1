"""A servicer whose hot methods answer at once and whose other methods wait for the rest of it.

Start-up time is mostly imports, and SQLAlchemy's is the largest (~0.35 s of ~0.8 s for the
patient service), yet a service's hottest rpc may need none of it (GetPatient runs on the
driver's connections). A service that says so (`ServiceSpec.early`) is served like this:

- the early servicer, built at start from modules that do not import SQLAlchemy, answers the
  early methods from the first call;
- the rest of the servicer (`load`: its modules imported on a thread, then `make_servicer` on the
  event loop) is begun once the server listens; a call of any other method waits for it (bounded
  by the call's deadline) and is then answered by the full servicer, exactly as it would have
  been, so readiness stays true: once SERVING, every rpc is answered correctly, the late ones
  after up to the rest of the load (~0.4 s of one core, measured in the README, Benchmarks);
- a load that fails (a broken image) takes liveness down with readiness, so the pod is restarted
  rather than left half-serving.

The import on a thread holds the GIL while it runs Python, so calls answered meanwhile wait for
it now and then (at most the interpreter's switch interval, 5 ms, at a time): a cost of the first
half second of a replica's life, measured in the README.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from his.base.errors import Unavailable

log = logging.getLogger(__name__)

LOADED = "the rest of the servicer is loaded"


@dataclass(frozen=True)
class Early:
    """What of a service answers before the rest of its servicer is loaded."""

    # Method names served by the early servicer (e.g. {"GetPatient"}).
    methods: frozenset[str]
    # Builds the early servicer (from modules that import nothing slow).
    make: Callable[[Any], Any]
    # Imports the modules the full servicer needs (run on a thread, away from the event loop).
    load: Callable[[], None]


class DeferredServicer:
    """What the generated `add_<Service>Servicer_to_server` is given: the early servicer's
    methods as they are, every other method waiting for the full servicer."""

    def __init__(self, early: Early, early_servicer: Any) -> None:
        self._early = early
        self.early_servicer = early_servicer
        self._full: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # A load that failed: the calls that waited get UNAVAILABLE, not the import error.
        self._full.add_done_callback(lambda future: future.exception())

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._early.methods:
            return getattr(self.early_servicer, name)
        full = self._full

        async def waiting(request: Any, context: Any) -> Any:
            if not full.done():
                await asyncio.shield(full)
            answer = getattr(full.result(), name)(request, context)
            if inspect.isasyncgen(answer):  # a server-streaming method
                async for message in answer:
                    await context.write(message)
                return None
            return await answer

        waiting.__name__ = name
        return waiting

    @property
    def loaded(self) -> bool:
        """Whether the full servicer answers the other methods now."""
        return self._full.done() and self._full.exception() is None

    async def load(self, make_full: Callable[[], Any]) -> None:
        """Import the rest on a thread, build the full servicer, let the waiting calls through.
        Raises what the load raised (the caller takes the process out of service)."""
        began = time.perf_counter()
        try:
            await asyncio.to_thread(self._early.load)
            servicer = make_full()
        except asyncio.CancelledError:
            # Stopped while loading: the calls that waited are refused, retryable elsewhere.
            self._full.set_exception(
                Unavailable("the service is stopping", reason="SERVICE_STOPPING")
            )
            raise
        except BaseException as error:
            self._full.set_exception(
                Unavailable("the service failed to load; try another replica", reason="LOAD_FAILED")
            )
            log.critical("the servicer failed to load", exc_info=error)
            raise
        # What the load built lives as long as the process, as start-up's own objects do.
        gc.freeze()
        self._full.set_result(servicer)
        # bench/startup.py reads this line: when every method answers without waiting.
        log.info(LOADED, extra={"fields": {"load_s": round(time.perf_counter() - began, 3)}})
