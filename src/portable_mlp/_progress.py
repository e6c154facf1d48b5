"""The one console and the one progress bar (rich), shared by the training loop and the CLI."""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from ._backend import Array, to_float


def console(*, stderr: bool = False) -> Any:
    """A rich console on stdout (tables, reports) or stderr (progress, notes)."""
    from rich.console import Console

    return Console(stderr=stderr)


class EpochProgress:
    """Progress of one training run on stderr: a bar over the epochs with the last loss (and
    score), and under it a bar over the current epoch's steps with the running loss.

    Use as a context manager; the bars are removed from the live display on exit. ``eval_name``
    is what the eval set is called (the command line's is its held-out test split).
    """

    def __init__(self, epochs: int, eval_name: str = "eval") -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console(stderr=True),
        )
        self._epochs = self._bar.add_task("epochs", total=epochs, info="")
        self._steps = self._bar.add_task("steps", total=1, info="", visible=False)
        self._every = 1
        self._eval_name = eval_name

    def __enter__(self) -> EpochProgress:
        self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.update(self._steps, visible=False)
        self._bar.stop()

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._bar.reset(
            self._steps, total=steps, description=f"epoch {epoch}", info="", visible=True
        )
        self._every = max(1, steps // 10)

    def step(self, step_losses: list[Array], samples: int) -> None:
        """One more step; ``step_losses`` are the summed losses so far over ``samples`` rows."""
        if len(step_losses) % self._every == 0:  # reading the loss syncs: only now and then
            running = to_float(functools.reduce(operator.add, step_losses)) / samples
            self._bar.update(self._steps, advance=1, info=f"loss {running:.4f}")
        else:
            self._bar.update(self._steps, advance=1)

    def end_epoch(self, logs: Mapping[str, float]) -> None:
        """The epoch's loss, and its validation and eval scores where it has them."""
        info = f"loss {logs['loss']:.4f}"
        for key, label in (("validation_score", "validation"), ("eval_score", self._eval_name)):
            if key in logs:
                info += f", {label} {logs[key]:.4f}"
        self._bar.update(self._epochs, advance=1, info=info)

    def log(self, message: str) -> None:
        self._bar.console.print(message)
