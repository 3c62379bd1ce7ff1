"""A stop signal ends the worker within a bound, whatever its loop thread is doing.

SIGTERM/SIGINT set a flag the loop checks between steps — but a Python signal handler runs only
when the main thread is back in the interpreter, and a librdkafka call can hold it for a long time
(a transaction call waits up to its timeout; ``Consumer.seek`` and a consumer's destruction wait
without any). A handler alone left workers deaf to SIGTERM for minutes. So the signal also wakes a
watcher thread, through ``signal.set_wakeup_fd`` (written by the C-level handler at once, from any
thread), which arms a deadline: if the process is still alive ``grace_s`` later, every thread's
stack goes to stderr (the worker's log: where it was stuck) and the process ends with the exit
code armed last. The worker arms it too once its loop is over, so that releasing the clients
cannot hold the process either. Nothing is lost by leaving that way: what the worker had not
committed is reread by the partitions' next owner.

``SIGUSR1`` writes every thread's stack to stderr at any time (``faulthandler``) and the worker
goes on: ``kill -USR1 <pid>`` shows where a worker that makes no progress is.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger("tailsift")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ShutdownGuard:
    def __init__(self, on_stop: Callable[[int], None], grace_s: float, signal_exit_code: int):
        self.on_stop = on_stop
        self.grace_s = grace_s
        self.signal_exit_code = signal_exit_code
        self.exit_code = signal_exit_code
        self._lock = threading.Lock()
        self._armed = False

    def install(self) -> None:
        """From the main thread, before the loop starts."""
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handler)
        threading.Thread(target=self._watch_signals, args=(read_fd,), name="stop-signal", daemon=True).start()

    def arm(self, exit_code: int) -> None:
        """From now on the process has ``grace_s`` to end; if it has not, it exits ``exit_code``
        (the code of the latest call)."""
        with self._lock:
            self.exit_code = exit_code
            if self._armed:
                return
            self._armed = True
        threading.Thread(target=self._deadline, name="stop-deadline", daemon=True).start()

    def _handler(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        self.on_stop(signum)

    def _watch_signals(self, read_fd: int) -> None:
        # one read per batch of signals delivered; ends at the first stop signal
        while True:
            data = os.read(read_fd, 64)
            if not data:
                return
            if any(b in STOP_SIGNALS for b in data):
                self.arm(self.signal_exit_code)
                return

    def _deadline(self) -> None:
        # the process normally ends long before this (the thread is a daemon)
        threading.Event().wait(self.grace_s)
        log.error(
            "still running %.0f s after it was told to stop: exiting %d now (uncommitted input is reread by "
            "the next owner); the stack of every thread follows",
            self.grace_s,
            self.exit_code,
        )
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        for h in logging.getLogger().handlers:
            try:
                h.flush()
            except Exception:  # noqa: BLE001 - leaving matters more than a last log line
                pass
        os._exit(self.exit_code)
