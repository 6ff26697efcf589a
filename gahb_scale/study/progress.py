"""Progress of a study run: the `gahb_scale.study` logger, every line stamped with the seconds since
the study layer was loaded, and one progress bar per stage (`StageProgress`, drawn by tqdm on a
terminal, plain lines otherwise). The CLI shows them on stdout (`show_progress`); a notebook may too.
While the study runs, Ray's own output (Tune's banners, raylet warnings, its loggers) goes to a log
file instead (`ray_output_to`). A failure is told in one line (`failure_reason`)."""

from __future__ import annotations

import logging
import statistics
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import TextIO

from ray.exceptions import RayTaskError
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError
from tqdm import tqdm

log = logging.getLogger("gahb_scale.study")
_STARTED = time.time()
# The terminal while Ray's output is sent to a log file (sys.stdout then points to the file).
_terminal: TextIO | None = None
# Loggers whose records are Ray's (and MLflow's) machinery, not the study's progress.
MACHINERY_LOGGERS = ("ray", "mlflow", "alembic")
# Seconds between plain progress lines of a stage, when the output is not a terminal.
PLAIN_EVERY_S = 30.0


def _out() -> TextIO:
    return _terminal or sys.stdout


class _Stdout(logging.Handler):
    """Writes each line, stamped with the seconds since the study layer was loaded, to the terminal
    as it is when the line is logged (a redirect, a test's capture), above any progress bar."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.created - _STARTED:6.0f}s {record.getMessage()}"

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=_out())
        except Exception:  # noqa: BLE001 - logging's own contract: a failed line must not stop the study
            self.handleError(record)


def show_progress() -> None:
    """Print the study's progress lines on stdout (once, however often called)."""
    if not any(isinstance(h, _Stdout) for h in log.handlers):
        log.addHandler(_Stdout())
    log.setLevel(logging.INFO)
    log.propagate = False


class StageProgress:
    """One stage's progress, done/total with rate and ETA: a tqdm bar on a terminal; otherwise a
    plain line at most every PLAIN_EVERY_S, and one at the end unless the last gave the final count."""

    def __init__(self, stage: str, total: int, unit: str):
        self.stage, self.total, self.unit = stage, total, unit
        self.done, self.last_line = 0, time.monotonic()
        # (time, count) at the first update: the rate is measured from there, since what comes
        # before it (Ray starting workers, a pack loading its data) says nothing of what is left
        self.first: tuple[float, int] | None = None
        self.told: int | None = None  # the count the last plain line gave
        terminal = _out()
        self.bar = tqdm(total=total, desc=f"[{stage}]", unit=f" {unit}", file=terminal, dynamic_ncols=True,
                        disable=not (hasattr(terminal, "isatty") and terminal.isatty()), leave=True)

    def update(self, n: int = 1) -> None:
        self.done += n
        self.first = self.first or (time.monotonic(), self.done)
        self.bar.update(n)
        if self.bar.disable and time.monotonic() - self.last_line >= PLAIN_EVERY_S:
            self._line()

    def _line(self) -> None:
        self.last_line, self.told = time.monotonic(), self.done
        since, counted = self.first or (self.last_line, 0)
        rate = (self.done - counted) / (self.last_line - since) if self.last_line > since else 0.0
        speed = ""
        if rate > 0:
            speed = f", {rate:.3g}/s"
            if self.done < self.total:
                speed += f", ETA {(self.total - self.done) / rate:.0f} s"
        log.info(f"[{self.stage}] {self.done}/{self.total} {self.unit}s{speed}")

    def close(self) -> None:
        self.bar.close()
        if self.bar.disable and self.told != self.done:
            self._line()


@contextmanager
def ray_output_to(path: Path | None):
    """While inside, Ray's own output — what Tune and Ray's error listener print, and the records
    of Ray's and MLflow's loggers — goes to the file at `path`; the study's progress still goes to
    the terminal. `path=None` leaves everything where Ray puts it (`run --verbose`)."""
    global _terminal
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as file:
        handler = logging.StreamHandler(file)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        loggers = [logging.getLogger(name) for name in MACHINERY_LOGGERS]
        saved = [(logger, logger.handlers[:], logger.propagate) for logger in loggers]
        for logger in loggers:
            logger.handlers, logger.propagate = [handler], False
        _terminal = sys.stdout
        try:
            with redirect_stdout(file), redirect_stderr(file):
                yield
        finally:
            _terminal = None
            for logger, handlers, propagate in saved:
                logger.handlers, logger.propagate = handlers, propagate


def loss_summary(losses: list[float]) -> str:
    """A pack's losses in a few numbers, whatever its size."""
    if len(losses) == 1:
        return f"loss {losses[0]:.4g}"
    return f"loss min {min(losses):.4g} / median {statistics.median(losses):.4g} / max {max(losses):.4g}"


def _wrapped(error: BaseException) -> BaseException | None:
    """The exception `error` was raised for, if it is one of Ray's wrappers."""
    if isinstance(error, RayTaskError):  # a task's or actor's exception, re-raised where it is awaited
        return error.cause
    if isinstance(error, WorkerGroupError) and error.worker_failures:  # a Train run: its lowest failed rank's
        return error.worker_failures[min(error.worker_failures)]
    if isinstance(error, ControllerError):
        return error.controller_failure
    if isinstance(error, UserExceptionWithTraceback):  # a Train worker's exception with its trace as text
        return error._base_exc  # the exception itself, which Ray names by no public attribute
    return None


def failure_reason(error: BaseException | str | None) -> str:
    """Why a Ray task or Tune trial failed, in one line: the innermost exception inside Ray's wrappers
    (a task's RayTaskError, a Train run's worker or controller error) as a traceback ends,
    "module.Error: message". Tune keeps only the text of an error that is no exception of the trial's
    task: then its last line."""
    if error is None:
        return "no error was saved"
    if isinstance(error, str):
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        return (lines or ["no error was saved"])[-1][:300]
    while (inner := _wrapped(error)) is not None:
        error = inner
    return " ".join(traceback.format_exception_only(error)[0].split())[:300]
