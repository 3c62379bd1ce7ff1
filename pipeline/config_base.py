"""What every config section shares: strict models and the unique-name check."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


Named = TypeVar("Named")


def require_unique_names(items: Sequence[Named], what: str) -> Sequence[Named]:
    """Raise (naming the duplicate) when two entries of a list share a ``name``."""
    seen: set[str] = set()
    for item in items:
        name = item.name  # type: ignore[attr-defined]
        if name in seen:
            raise ValueError(f"{what} name {name!r} is used twice")
        seen.add(name)
    return items
