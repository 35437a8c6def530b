"""The rich progress bar of a training run: steps, steps/s, current NLL, time left."""
from __future__ import annotations

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text


class _StepsPerSecond(ProgressColumn):
    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:6.1f} steps/s" if speed else "  -- steps/s")


def progress_bar(console, enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _StepsPerSecond(),
                    TextColumn("NLL {task.fields[nll]:8.3f}"), TimeRemainingColumn(),
                    console=console, transient=True, disable=not enabled)
