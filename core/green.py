"""The one place that knows about gevent: spawning, deadlines, sleeping, off-loop work,
and the few OS threads that must not be greenlets.

Under gunicorn's gevent worker the process is monkey-patched, so `threading` and
`time.sleep` are already cooperative and a `deadline()` interrupts a blocked socket
read. In a serverless handler (Lambda, Cloud Functions, Azure Functions) nothing is
patched: the same calls still work, but a deadline can only interrupt code that yields
to gevent, so every client we use also carries its own socket timeout. Nothing else
in the code base imports gevent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gevent.pool import Pool

T = TypeVar("T")
log = logging.getLogger(__name__)

#: The most destination writes one worker runs at once across all requests in dispatch().
DISPATCH_POOL_SIZE = 256
_pool: Pool | None = None


_patched = False


def patched() -> bool:
    """Whether gevent drives this process (gunicorn's gevent worker patches it at start).
    Patching cannot be undone, so once seen it is remembered (every request asks)."""
    global _patched
    if not _patched:
        _patched = monkey.is_module_patched("socket")
    return _patched


def unpatched(module: str, name: str) -> Any:
    """The standard library's own `module.name`, even after gevent's monkey-patching."""
    return monkey.get_original(module, name)


class DeadlineExceeded(Exception):
    """Raised inside a `deadline()` block whose time ran out (unless it names its own error)."""


class deadline:  # noqa: N801 - used as a function: `with green.deadline(seconds):`
    """Cut the block off after `seconds` (None: no limit) by raising `error` inside it,
    or `DeadlineExceeded`. Only one's own timer is caught, never an outer one's.

    A bare timer of the greenlet's own event loop, as gevent.Timeout arms, without its
    bookkeeping: a request enters three of these (body read, and each buffered
    destination's write), and gevent.Timeout's set-up costs about four times as much."""

    __slots__ = ("_error", "_seconds", "_timer")

    def __init__(self, seconds: float | None, error: BaseException | None = None) -> None:
        self._seconds = seconds
        self._error = error
        self._timer: Any = None

    def __enter__(self) -> None:
        if self._seconds is None:
            return
        own = self._error if self._error is not None else DeadlineExceeded(f"no answer within {self._seconds:.3g}s")
        self._timer = gevent.get_hub().loop.timer(self._seconds)
        self._timer.start(gevent.getcurrent().throw, own)

    def __exit__(self, *_exc: object) -> None:
        if self._timer is not None:
            self._timer.close()
            self._timer = None


def sleep(seconds: float) -> None:
    gevent.sleep(seconds) if patched() else time.sleep(seconds)


def spawn(function: Callable[..., Any], *args: Any) -> gevent.Greenlet:
    """Start `function` in its own greenlet now; an exception it raises is logged, not lost."""
    greenlet = gevent.spawn(function, *args)
    greenlet.link_exception(lambda g: log.error("%s failed: %r", getattr(function, "__name__", function), g.exception))
    return greenlet


def native_lock() -> Any:
    """A lock of the operating system, not gevent's: for state shared with a `NativeThread`.
    A greenlet that blocks on it blocks its whole worker, so hold it for a few statements
    only, and never across anything that can yield to gevent (I/O, logging, sleeping)."""
    return unpatched("_thread", "allocate_lock")()


def native_sleep(seconds: float) -> None:
    """Sleep in a `NativeThread` (gevent's sleep there would start an event loop of its own)."""
    unpatched("time", "sleep")(seconds)


class NativeThread:
    """An OS thread even where gevent has patched `threading` (there, a Thread is a greenlet).
    For work that must keep its own time however busy the event loop is: a greenlet's timer
    fires only once every greenlet ready to run has had its turn. The thread needs the GIL
    only for its Python statements; waiting (`native_sleep`, a `native_lock`, a syscall such
    as fsync) releases it. To hand results back to greenlets, use a `Wakeup` (made in the
    loop's thread): the thread then touches no gevent object itself."""

    def __init__(self, target: Callable[[], None], name: str, on_exit: Callable[[], None] | None = None) -> None:
        """`on_exit` is called in the thread once `target` has ended, however it ended: by then
        `alive` is False, and `join()` returns only after `on_exit` has."""
        self.name = name
        self._target = target
        self._on_exit = on_exit
        self._finished = native_lock()  # held while `target` runs
        self._finished.acquire()
        self._exited = native_lock()  # held until `on_exit` has run too
        self._exited.acquire()
        unpatched("_thread", "start_new_thread")(self._run, ())

    def _run(self) -> None:
        try:
            self._target()
        except BaseException:  # noqa: BLE001 - nothing above this frame would report it
            log.exception("thread %s failed", self.name)
        finally:
            self._finished.release()
            try:
                if self._on_exit is not None:
                    self._on_exit()
            finally:
                self._exited.release()

    @property
    def alive(self) -> bool:
        return self._finished.locked()

    def join(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the thread to end, `on_exit` included (blocking this
        whole worker, so only at shutdown); whether it did."""
        if self._exited.acquire(timeout=timeout):
            self._exited.release()
            return True
        return False


class Wakeup:
    """Call `callback` in this worker's event loop when another OS thread calls `send()`: the
    way a `NativeThread` hands results back without touching gevent objects itself (a gevent
    lock or event used from a foreign thread costs a round of cross-thread signalling each;
    a `threading.Lock` made after patching, as a metric's may be, is one). Sends that come
    before the callback has run are answered by one call. Unpatched, `send()` calls
    `callback` in the sending thread. Create it in the thread that runs the event loop (a
    request's, not gunicorn's master)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback = callback
        self._watcher: Any = None
        if patched():
            self._watcher = gevent.get_hub().loop.async_()
            self._watcher.start(callback)

    @property
    def in_loop(self) -> bool:
        """Whether the callback runs in the event loop (and so can wake greenlets directly)."""
        return self._watcher is not None

    def send(self) -> None:
        """Thread-safe."""
        if self._watcher is not None:
            self._watcher.send()
        else:
            self._callback()

    def close(self) -> None:
        """Call back once more, now (whatever was sent last is handled), and stop watching.
        Call it in the loop's thread, once no other thread sends any more."""
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
            self._callback()


def off_loop(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run blocking work (zlib, disk I/O, fsync) on gevent's thread pool when gevent drives
    this process, so the event loop keeps serving requests meanwhile; else just call it."""
    if monkey.is_module_patched("threading"):
        # Errors are carried back and raised here: raised in the pool, gevent would also print
        # a traceback for every expected failure (a full disk during a flush, say).
        ok, value = gevent.get_hub().threadpool.apply(_captured, (function, args, kwargs))
        if not ok:
            raise value
        return value
    return function(*args, **kwargs)


def _captured(function: Callable[..., T], args: tuple, kwargs: dict) -> tuple[bool, Any]:
    try:
        return True, function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - re-raised in the calling greenlet
        return False, exc


def run_all(calls: Sequence[Callable[[], T]]) -> list[T]:
    """Run every call concurrently on the bounded dispatch pool and return their results in
    order. Each call must catch its own errors (dispatch turns them into results)."""
    if len(calls) == 1:
        return [calls[0]()]
    global _pool
    if _pool is None:
        _pool = Pool(DISPATCH_POOL_SIZE)
    greenlets = [_pool.spawn(call) for call in calls]
    gevent.joinall(greenlets, raise_error=True)
    return [g.value for g in greenlets]


def each(function: Callable[[T], None], items: Sequence[T], concurrency: int) -> None:
    """Call `function` on every item in order, with up to `concurrency` calls running at once
    when gevent drives this process (one after another otherwise). Once a call raises, no
    further calls start; the first error is raised here after the running ones finish."""
    if concurrency <= 1 or len(items) <= 1 or not patched():
        for item in items:
            function(item)
        return
    errors: list[BaseException] = []

    def call(item: T) -> None:
        if errors:
            return
        try:
            function(item)
        except Exception as exc:  # noqa: BLE001 - raised below, in the caller
            errors.append(exc)

    pool = Pool(concurrency)
    for item in items:
        if errors:
            break
        pool.spawn(call, item)  # waits while `concurrency` calls are running
    pool.join()
    if errors:
        raise errors[0]


def init_grpc() -> None:
    """gRPC must cooperate with gevent's loop when the process is patched (Pub/Sub, the
    BigQuery Storage Write API); call before the first gRPC client is made."""
    if patched():
        import grpc.experimental.gevent

        grpc.experimental.gevent.init_gevent()
