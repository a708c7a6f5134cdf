"""Signals held back while a state change is committed, so that an interrupt cannot split it.

Python runs a signal's handler (``KeyboardInterrupt`` for SIGINT, or whatever a
program installed, e.g. for a timer) in the main thread between two bytecodes,
so its exception can surface in the middle of any multi-step update.
:func:`deferred_signals` swaps every Python-level handler for one that only
records the signal and, on leaving the block, puts the handlers back and runs
the recorded signals' handlers: the interrupt arrives right after the block.
Outside the main thread, where Python never runs handlers, it does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["deferred_signals"]

try:  # the C module: ``signal``'s wrappers convert every number to an enum, ~1 us per signal and call
    import _signal as _handlers
except ImportError:  # another Python implementation
    _handlers = signal

_SIGNALS = sorted(int(signum) for signum in signal.valid_signals())


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Run the block with every Python-level signal handler deferred to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, FrameType | None]] = []
    originals: dict[int, Any] = {}

    def record(signum: int, frame: FrameType | None) -> None:
        received.append((signum, frame))

    try:
        for signum in _SIGNALS:
            handler = _handlers.getsignal(signum)
            if callable(handler):
                originals[signum] = handler
                _handlers.signal(signum, record)
        yield
    finally:
        _restore(originals)
        for signum, frame in received:
            originals[signum](signum, frame)


def _restore(originals: dict[int, Any]) -> None:
    """Put every handler back, even if a restored one raises while the others are still swapped."""
    remaining = list(originals.items())
    interrupted: BaseException | None = None
    while remaining:
        try:
            while remaining:
                _handlers.signal(*remaining[-1])
                remaining.pop()
        except BaseException as error:  # a signal whose handler is already back fired meanwhile
            interrupted = interrupted or error
    if interrupted is not None:
        raise interrupted
