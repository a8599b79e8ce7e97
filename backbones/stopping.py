"""Stop a training run cleanly on SIGTERM or SIGINT: finish the iteration, write a checkpoint, exit.

``timeout``, a cluster's preemption, a container's shutdown, a lent machine's call limit and Ctrl-C
all send one of these; without a handler a run loses every iteration since its last periodic
checkpoint. The first signal asks the engine to stop after the current iteration; a second one acts
as it normally would (stops at once).
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(Exception):
    """A stop signal arrived; the run's checkpoint at ``iteration`` is on disk."""

    def __init__(self, signal_name: str, iteration: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal_name} at iteration {iteration}: {checkpoint} written; continue with "
                         "the same command and --resume")  # fmt: skip
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by that signal (143 for SIGTERM, 130 for SIGINT)."""
        number = getattr(signal, self.signal_name, None)
        return 128 + int(number) if isinstance(number, signal.Signals) else 1


class StopRequests:
    """While active, the first SIGTERM / SIGINT is recorded in :attr:`received` instead of ending the process.

    Signal handlers can only be installed from the main thread; elsewhere (a trainer driven from a
    worker thread) this does nothing and signals act as usual."""

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for number in SIGNALS:
                self._previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number: int, frame: FrameType | None) -> None:
        received = signal.Signals(number)
        if self.received is None:
            self.received = received
            log.warning("%s: stopping after this iteration with a checkpoint (send it again to stop at once)",
                        received.name)  # fmt: skip
        signal.signal(received, self._previous.get(received, signal.SIG_DFL))  # the next one acts as usual

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:  # fmt: skip
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
