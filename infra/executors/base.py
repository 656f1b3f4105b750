"""The executor interface and the reference executor (a for-loop in this process)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol


class Executor(Protocol):
    """Runs ``fn`` over ``items``; yields ``(item, result_or_exception)`` in completion order."""

    description: str

    def map_unordered(
        self, fn: Callable[[Any], Any], items: Iterable[Any], keys: Iterable[str]
    ) -> Iterator[tuple[Any, Any]]:
        """Run every item; ``keys`` name the tasks (Dask keys, log lines)."""
        ...

    def close(self) -> None:
        """Release workers."""
        ...


class LocalExecutor:
    """Runs tasks one after the other in this process: the reference every executor matches."""

    description = "local (in-process, sequential)"

    def map_unordered(self, fn, items, keys):
        for item, _ in zip(items, keys, strict=True):
            try:
                yield item, fn(item)
            except Exception as err:  # reported per task, never stops the others
                yield item, err

    def close(self) -> None:
        """Nothing to release."""
