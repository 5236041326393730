"""Progress reporting: per-layer bytes and rates on a terminal, nothing in CI logs.

The engine reports through the small :class:`Progress` protocol; the CLI picks
:class:`RichProgress` when stderr is a terminal (and neither ``-q`` nor ``--json`` was
given), else :class:`NullProgress`, so logs stay clean.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol


class Progress(Protocol):
    def start(self, key: str, label: str, total: int) -> None: ...
    def advance(self, key: str, n: int) -> None: ...
    def finish(self, key: str, note: str = "") -> None: ...


class NullProgress:
    def start(self, key: str, label: str, total: int) -> None:
        pass

    def advance(self, key: str, n: int) -> None:
        pass

    def finish(self, key: str, note: str = "") -> None:
        pass


class RichProgress:
    """A live table of layers on stderr, with bytes, rate and time left."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as _Rich

        self._rich = _Rich(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=False)
        self._tasks: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._rich.stop()

    def start(self, key: str, label: str, total: int) -> None:
        with self._lock:
            self._tasks[key] = (self._rich.add_task(label, total=total), label, total)

    def advance(self, key: str, n: int) -> None:
        hit = self._tasks.get(key)
        if hit is not None:
            self._rich.advance(hit[0], n)

    def finish(self, key: str, note: str = "") -> None:
        with self._lock:
            if key not in self._tasks:
                self._tasks[key] = (self._rich.add_task(key, total=1), key, 1)
            task, label, total = self._tasks[key]
        self._rich.update(task, completed=total, description=f"{label} [dim]{note}[/dim]" if note else label)


class CountingReader:
    """Passes reads through, reporting the bytes to a progress key."""

    def __init__(self, raw: Any, progress: Progress, key: str):
        self._raw = raw
        self._progress = progress
        self._key = key

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._raw.read(n)
        if data:
            self._progress.advance(self._key, len(data))
        return data
