"""Deadline: the --deadline option every CLI command has, so that no run can hang.

The main thread gets DeadlineError (locks released, nothing half-built published); a watchdog ends the
process if it has not stopped DEADLINE_GRACE_S later. Process-wide: for the CLI, not for library callers.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import click

from .errors import DeadlineError

__all__ = ["DEADLINE_GRACE_S", "deadline_option"]

DEADLINE_GRACE_S = 5.0  # after the deadline, the time a command has to stop cleanly (locks, temp files) before it is ended


def _arm(ctx: click.Context, param: click.Parameter, seconds: float | None) -> None:
    """Stop the command after `seconds`: DeadlineError in the main thread (locks released, nothing
    half-built published), and if it has not ended DEADLINE_GRACE_S later, an immediate exit 124.
    """
    if not seconds:
        return

    def passed(signum: int, frame: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise DeadlineError(f"--deadline: stopped after {seconds:g} s")

    def hard_stop() -> None:
        sys.stderr.write(f"error: --deadline: stopped after {seconds:g} s (and {DEADLINE_GRACE_S:g} s of grace)\n")
        sys.stderr.flush()
        os._exit(DeadlineError.exit_code)

    signal.signal(signal.SIGALRM, passed)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog = threading.Timer(seconds + DEADLINE_GRACE_S, hard_stop)
    watchdog.daemon = True
    watchdog.start()


def deadline_option() -> click.Option:
    return click.Option(["--deadline"], type=click.FloatRange(min=0, min_open=True), envvar="PIPELINE_DEADLINE",
                        expose_value=False, callback=_arm,
                        help="Stop the command after this many seconds (exit 124), so no run can hang. "
                             "Env: PIPELINE_DEADLINE.")
