"""User-facing error types: the CLI prints their message as one line and exits with their code."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (or its type name): enough for a one-line user error."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def one_line(text: object, limit: int = 400) -> str:
    """`text` with its whitespace runs (newlines included) as single spaces, cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


class UserError(Exception):
    """A mistake the user can fix (bad path, bad recipe, malformed input). Never shown as a traceback."""

    exit_code = 1


class InputError(UserError):
    """An input file or dataset cannot be read as asked (missing, unreadable, unknown format, no column)."""

    exit_code = 3


class RecipeError(UserError):
    """The recipe (YAML or options) is invalid or names something that does not exist."""

    exit_code = 4


class StateError(UserError):
    """The workdir refuses the operation (version exists, table missing, store busy)."""

    exit_code = 5


class WorkerDied(UserError):
    """A worker process of the local pool ended abruptly (an OOM kill, a signal); the run can be resumed."""

    exit_code = 10


class QueryError(UserError):
    """A SQL statement is refused or fails."""

    exit_code = 6


class BudgetReached(UserError):
    """The teacher stopped at `max_cost`; everything paid for is stored and a rerun with a larger cap goes on."""

    exit_code = 7


class TeacherFailed(UserError):
    """Teacher requests still failed after every retry: the run stops before curation (exit 9) unless the recipe
    says `teacher.on_failures: continue`; what succeeded is stored, and rerunning the same command retries only
    the failed requests."""

    exit_code = 9
    stats: dict | None = None  # the teacher step's stats (failures_by_kind, top_failure, ...) when raised by it
