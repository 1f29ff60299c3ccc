"""A rich progress bar, as PyMC uses (it works in terminals and notebooks); silent when disabled."""

from __future__ import annotations

from collections.abc import Iterable, Iterator


class ProgressBar:
    """Progress over ``total`` units, optionally with text fields shown after the bar.

    ``remaining=False`` leaves out the time-remaining estimate: for work that may stop
    before ``total`` (training that stops on its own), where it would only mislead.
    """

    def __init__(
        self,
        description: str,
        total: int,
        enabled: bool = True,
        *,
        remaining: bool = True,
        **fields: str,
    ):
        self.bar = None
        if not enabled:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        extra = "  ".join(f"{k} {{task.fields[{k}]}}" for k in fields)
        columns = [TextColumn(description), BarColumn(), MofNCompleteColumn()]
        if extra:
            columns.append(TextColumn(extra))
        columns.append(TimeElapsedColumn())
        if remaining:
            columns.append(TimeRemainingColumn())
        self.bar = Progress(*columns)
        self.task = self.bar.add_task(description, total=total, **fields)
        self.bar.start()

    def update(self, completed: int, **fields: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=completed, **fields)

    def wrap(self, items: Iterable) -> Iterator:
        for i, item in enumerate(items, start=1):
            yield item
            self.update(i)

    def close(self, message: str | None = None) -> None:
        """Stop the bar; print ``message`` under it (only when the bar is shown)."""
        if self.bar is not None:
            self.bar.stop()
            if message:
                self.bar.console.print(message)
