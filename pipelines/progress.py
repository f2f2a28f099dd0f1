"""Progress for long steps: rich bars on a terminal; without one (CI, `| tee`, nohup) plain periodic lines.

Both show counts, rate and ETA (and tokens, dollars and the projected total for teachers). Task descriptions
may hold user data (file names), so they are never read as rich markup.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True, markup=False, emoji=False, highlight=False)

PLAIN_INTERVAL_S = 15.0  # default seconds between plain progress lines (PARADISTILL_PROGRESS_INTERVAL)


def _speed(task: Task) -> float | None:
    """Rich's recent speed, else the average since the task started (steps that advance in large batches
    leave rich's 30 s window empty between two updates)."""
    speed = task.finished_speed or task.speed
    if not speed and task.completed and task.elapsed:
        speed = task.completed / task.elapsed
    return speed or None


def _eta(task: Task) -> float | None:
    speed = _speed(task)
    if task.total is None or not speed:
        return None
    return max(0.0, task.total - task.completed) / speed


def _rate(task: Task) -> str:
    speed = _speed(task)
    unit = task.fields.get("unit", "rows")
    return f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s"


def _tokens(task: Task) -> str:
    tokens = task.fields.get("tokens")
    if tokens is None:
        return ""
    secs = task.elapsed or 0
    return f"{tokens:,} tok " + (f"{tokens / secs:,.0f} tok/s" if secs > 0 else "- tok/s")


def _cost(task: Task) -> str:
    cost = task.fields.get("cost")
    if cost is None:
        return ""
    projected = task.fields.get("projected")
    total = "" if projected is None else f" of ~${projected:,.2f}" if projected >= 1 else f" of ~${projected:,.4f}"
    return f"${cost:,.4f}{total}"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def plain_line(task: Task) -> str:
    """One log line for a task: description, count (and %), rate, tokens, dollars, elapsed and ETA."""
    done = f"{task.completed:,.0f}"
    if task.total is not None:
        done += f"/{task.total:,.0f}"
        if task.total:
            done += f" ({100 * task.completed / task.total:.0f}%)"
    parts = [done, _rate(task), _tokens(task), _cost(task), f"elapsed {_clock(task.elapsed)}"]
    if task.total is not None and not task.finished:
        parts.append(f"eta {_clock(_eta(task))}")
    return f"{task.description}: " + ", ".join(p for p in parts if p)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(_rate(task), style="progress.data.speed")


class _TokensColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(_tokens(task), style="cyan")


class _CostColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(_cost(task), style="green")


class PlainProgress(Progress):
    """The same task API as rich's Progress, drawn as plain lines: one per task every `interval` seconds while
    it moves, and one when it finishes, so a log without a terminal always shows where a run is."""

    def __init__(self, interval: float, stream=None) -> None:
        super().__init__(disable=True)
        self.interval = interval
        self.stream = stream or sys.stderr
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._shown: dict[int, tuple[float, bool]] = {}  # task id -> (completed, finished) last printed

    def start(self) -> None:
        super().start()
        if self._thread is None:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._loop, name="paradistill-progress", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.emit()
        super().stop()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._emit_finished(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._emit_finished(task_id)

    def _emit_finished(self, task_id) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            line = plain_line(task) if task is not None and task.finished and not self._shown.get(
                task_id, (0, False))[1] else None
            if line:
                self._shown[task_id] = (task.completed, True)
        if line:
            self._write(line)

    def _loop(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.emit()

    def emit(self) -> None:
        """Print a line for every task that moved since its last line."""
        lines = []
        with self._lock:
            for tid, task in self._tasks.items():
                last = self._shown.get(tid)
                if last is not None and last[1]:
                    continue
                if last is None or last[0] != task.completed:
                    self._shown[tid] = (task.completed, task.finished)
                    lines.append(plain_line(task))
        for line in lines:
            self._write(line)

    def _write(self, line: str) -> None:
        try:
            self.stream.write(f"[progress {time.strftime('%H:%M:%S')}] {line}\n")
            self.stream.flush()
        except (OSError, ValueError):  # a closed pipe must not end the run
            pass


def _interval() -> float:
    try:
        return max(0.1, float(os.environ.get("PARADISTILL_PROGRESS_INTERVAL", PLAIN_INTERVAL_S)))
    except ValueError:
        return PLAIN_INTERVAL_S


def make_progress() -> Progress:
    """One Progress for a command; each long step adds a task with `unit` (and `tokens` for generation).
    Rich bars on a terminal, `PlainProgress` lines otherwise (or when PARADISTILL_PROGRESS=plain)."""
    mode = os.environ.get("PARADISTILL_PROGRESS", "auto")
    if mode == "plain" or (mode != "rich" and not console.is_terminal):
        return PlainProgress(_interval())
    return Progress(
        TextColumn("{task.description}", markup=False, style="bold"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        _RateColumn(),
        _TokensColumn(),
        _CostColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
