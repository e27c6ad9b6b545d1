"""The process's one compiled policy, which start-up compiles on a thread beside its imports.

Compiling the Rego policies takes ~50 ms of CPU here, nearly all of it in rego-cpp, which regopy
calls through ctypes, and ctypes lets go of the GIL: begun before `his serve` imports the server
(≈ 0.5 s of Python that holds the GIL), the compile runs on the machine's other core and is done
by the time the server needs it.
Nothing is imported on the thread (the main thread imports `his.runtime.policy` first), so the
two threads never race on a half-imported module.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future

from his.runtime.policy import PolicyEngine

_lock = threading.Lock()
_engine: Future[PolicyEngine] | None = None


def begin() -> None:
    """Start compiling the shipped policies on a daemon thread, if no one did yet."""
    global _engine  # noqa: PLW0603 (one per process, by design)
    with _lock:
        if _engine is not None:
            return
        _engine = Future()
    threading.Thread(target=_compile, args=(_engine,), name="policy-compile", daemon=True).start()


def _compile(engine: Future[PolicyEngine]) -> None:
    try:
        engine.set_result(PolicyEngine.load())
    except BaseException as error:  # handed to whoever waits; raised there
        engine.set_exception(error)


def engine() -> PolicyEngine:
    """The shipped policies, compiled once per process (waiting for a compile `begin` started;
    compiling here when none was). A policy that does not compile raises PolicyLoadError."""
    global _engine  # noqa: PLW0603
    with _lock:
        if _engine is None:
            _engine = Future()
            compile_here = True
        else:
            compile_here = False
        pending = _engine
    if compile_here:
        _compile(pending)
    return pending.result()
