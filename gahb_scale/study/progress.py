"""Progress of a study run: the `gahb_scale.study` logger, every line stamped with the seconds since
the study layer was loaded. The CLI shows it on stdout (`show_progress`); a notebook may too.
A failure is told in one line (`innermost_error`)."""

from __future__ import annotations

import logging
import re
import sys
import time

log = logging.getLogger("gahb_scale.study")
_STARTED = time.time()


class _Elapsed(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{record.created - _STARTED:6.0f}s {record.getMessage()}"


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (a redirect, a test's capture)."""

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress() -> None:
    """Print the study's progress lines on stdout (once, however often called)."""
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        handler = _Stdout()
        handler.setFormatter(_Elapsed())
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def innermost_error(text: str) -> str:
    """The last "SomeError: message" line of an error trace (Ray wraps the worker's own error in
    several layers), on one line; the trace's last line if there is none."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (errors or lines or ["no error trace was saved"])[-1][:300]
