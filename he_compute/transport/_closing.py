"""One mix-in so that every engine (queue, blob store, audit store) is a context manager that closes itself."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T", bound="Closing")


class Closing:
    """``with engine: ...`` closes ``engine`` on the way out (subclasses define ``close``)."""

    def close(self) -> None:  # pragma: no cover - always overridden
        """Release the engine's resources."""

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
