"""Preemption: SIGTERM (Kubernetes, Ray, Slurm) and SIGINT end a run at a checkpoint.

A rank's handler only records the signal; the loop asks every rank after each step
(`loop.run_rank`), so all ranks stop at the same step, write a checkpoint there, close
MLflow tracking and raise `TrainingStopped`. The launching process (`facetrain train
--nproc N`) forwards SIGTERM to its rank processes (`forward_to_children`); a terminal's
Ctrl-C reaches them through the process group. The exit status is 128 + the signal
(143 for SIGTERM, 130 for SIGINT). A second Ctrl-C ends the process at once, as if no
handler were installed; a repeated SIGTERM is ignored (the launcher's own clean-up sends
one to ranks that are already stopping; Kubernetes follows with SIGKILL after the grace
period anyway).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_received: int | None = None
_launcher_active = False  # inside forward_to_children: a signal may arrive before the loop


class TrainingStopped(RuntimeError):
    """Every rank stopped at one step after SIGTERM/SIGINT, with a checkpoint there."""

    def __init__(self, signum: int, step: int):
        self.signum = signum
        self.step = step
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}; a checkpoint was written "
            "there and the same command resumes from it"
        )


def received() -> int | None:
    """The first stop signal this process received, if any."""
    return _received


def exit_status(signum: int) -> int:
    return 128 + signum


def _record(signum: int, frame) -> None:
    global _received
    if _received == signum == signal.SIGINT:  # Ctrl-C twice: stop now, the default way
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if _received is None:
        _received = signum


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Record SIGTERM/SIGINT instead of dying, while inside (main thread only: elsewhere,
    as in a Ray Train worker thread, signals stay with whoever owns the process)."""
    global _received
    if not _in_main_thread():
        yield
        return
    if not _launcher_active:
        _received = None
    previous = {signum: signal.signal(signum, _record) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def forward_to_children() -> Iterator[None]:
    """In a process that launched ranks: record SIGTERM and pass it on to every child
    process, so each rank stops at the agreed step (SIGINT from a terminal reaches them
    through the process group already, so it is only recorded)."""
    global _received, _launcher_active
    if not _in_main_thread():
        yield
        return
    _received = None
    _launcher_active = True

    def forward(signum: int, frame) -> None:
        _record(signum, frame)
        if signum == signal.SIGTERM:
            for child in multiprocessing.active_children():
                with contextlib.suppress(OSError):
                    os.kill(child.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        _launcher_active = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def requested_stop() -> int:
    """The signal to stop for (0 when none), as one number that ranks can all-reduce."""
    return int(_received or 0)
