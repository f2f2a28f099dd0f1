"""Rich progress bars with counts, rate and ETA (and tokens/s, dollars and projected total for teachers)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "rows")
        return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")


class _TokensColumn(ProgressColumn):
    def render(self, task) -> Text:
        tokens = task.fields.get("tokens")
        if tokens is None:
            return Text("")
        secs = task.elapsed or 0
        rate = f"{tokens / secs:,.0f} tok/s" if secs > 0 else "- tok/s"
        return Text(f"{tokens:,} tok {rate}", style="cyan")


class _CostColumn(ProgressColumn):
    def render(self, task) -> Text:
        cost = task.fields.get("cost")
        if cost is None:
            return Text("")
        projected = task.fields.get("projected")
        total = f" of ~${projected:,.2f}" if projected is not None else ""
        return Text(f"${cost:,.4f}{total}", style="green")


def make_progress() -> Progress:
    """One Progress for a command; each long step adds a task with `unit` (and `tokens` for generation)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
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
