"""Ctrl-C at a boundary: the first one asks a loop to stop where its state is consistent, a second stops at once."""
from __future__ import annotations

import signal
import sys
import threading


class StopOnCtrlC:
    """While active, the first Ctrl-C sets `requested` (the loop stops at its next boundary, e.g. a training step
    or a generated token, so what it saves is consistent) and prints `what`; a second Ctrl-C raises
    KeyboardInterrupt at once.  Only in the main thread of a single process."""

    def __init__(self, enabled: bool = True, what: str = "stopping at the next boundary"):
        # not where Ctrl-C is someone else's to handle: a worker of `bmojo compare` ignores it (its parent stops
        # the pool), as does a process started in the background
        self.enabled = enabled and threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        self.requested, self._prev, self.what = False, None, what

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write(f"\nCtrl-C: {self.what} (Ctrl-C again to stop now)\n")

    def __enter__(self):
        if self.enabled:
            self._prev = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self.enabled:
            signal.signal(signal.SIGINT, self._prev)
