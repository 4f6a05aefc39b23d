"""User-item interactions: the write path's unit of data."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from recsys.domain.validation import EVENT_ID_PATTERN, SURFACE_PATTERN, Violations


class InteractionKind(enum.Enum):
    VIEW = "view"
    CLICK = "click"
    LIKE = "like"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RATE = "rate"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item interaction. `kind` is None when the caller did not set it (invalid)."""

    event_id: str
    user_id: str
    item_id: int
    kind: InteractionKind | None
    value: float
    event_time: dt.datetime | None
    surface: str = ""


def validate_interactions(
    interactions: Sequence[Interaction], *, max_batch_size: int, field: str = "events"
) -> None:
    """Raises InvalidArgument naming every bad field as `events[i].name`."""
    violations = Violations()
    if not interactions:
        violations.add(field, "must hold at least one event")
    elif len(interactions) > max_batch_size:
        violations.add(field, f"must hold at most {max_batch_size} events")
    seen_event_ids: set[str] = set()
    for index, event in enumerate(interactions[:max_batch_size]):
        prefix = f"{field}[{index}]"
        if not EVENT_ID_PATTERN.fullmatch(event.event_id):
            violations.add(f"{prefix}.event_id", "must be 1 to 128 printable ASCII characters")
        elif event.event_id in seen_event_ids:
            violations.add(f"{prefix}.event_id", "is repeated within the batch")
        seen_event_ids.add(event.event_id)
        violations.check_user_id(f"{prefix}.user_id", event.user_id)
        violations.check_item_id(f"{prefix}.item_id", event.item_id)
        if event.kind is None:
            violations.add(f"{prefix}.type", "is required")
        violations.check_finite(f"{prefix}.value", event.value)
        if event.event_time is None:
            violations.add(f"{prefix}.event_time", "is required")
        if event.surface and not SURFACE_PATTERN.fullmatch(event.surface):
            violations.add(f"{prefix}.surface", f"must match {SURFACE_PATTERN.pattern}")
    violations.raise_if_any()
