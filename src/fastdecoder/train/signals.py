"""SIGTERM / SIGINT during training: finish the step, save last.pt, write the summary, return normally."""
from __future__ import annotations

import os
import signal
import threading


class StopRequest:
    """SIGTERM / SIGINT: note it; the loop finishes the step, saves last.pt, writes the summary and returns.

    A second signal of the same kind acts as it did before (SIGINT: KeyboardInterrupt; SIGTERM: termination).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.SIGNALS:
            self._old[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        old = self._old.get(signum)
        signal.signal(signum, old if old is not None else signal.SIG_DFL)
        try:
            os.write(2, f"\n{signal.Signals(signum).name} received: finishing this step, then saving last.pt "
                        f"(send it again to stop at once)\n".encode())
        except OSError:
            pass

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None
