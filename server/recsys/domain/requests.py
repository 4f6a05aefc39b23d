"""Recommendation request objects and their validation."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from recsys.domain.validation import CATEGORY_PATTERN, Violations

MIN_LIMIT = 1
MAX_LIMIT = 100


class DeviceType(enum.Enum):
    UNKNOWN = "unknown"
    MOBILE = "mobile"
    WEB = "web"
    TABLET = "tablet"
    TV = "tv"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where and when a request comes from."""

    device_type: DeviceType = DeviceType.UNKNOWN
    country: str = ""
    locale: str = ""
    request_time: dt.datetime | None = None
    category: str | None = None


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    """A request for recommendations, as the domain sees it."""

    user_id: str
    surface: str
    limit: int
    context: RequestContext
    excluded_item_ids: tuple[int, ...] = ()


def validate_recommend_query(
    query: RecommendQuery,
    *,
    surfaces: tuple[str, ...],
    categories: tuple[str, ...],
    max_excluded_items: int,
) -> None:
    """Raises InvalidArgument listing every invalid field of the query."""
    violations = Violations()
    violations.check_user_id("user_id", query.user_id)
    if not query.surface:
        violations.add("surface", "is required")
    elif query.surface not in surfaces:
        violations.add("surface", f"must be one of {', '.join(surfaces)}")
    violations.check_range("limit", query.limit, MIN_LIMIT, MAX_LIMIT)
    violations.check_country("context.country", query.context.country)
    violations.check_locale("context.locale", query.context.locale)
    category = query.context.category
    if category is not None:
        if not CATEGORY_PATTERN.fullmatch(category):
            violations.add("context.category", "must be 1 to 64 printable characters")
        elif categories and category not in categories:
            violations.add("context.category", "is not a known category")
    if len(query.excluded_item_ids) > max_excluded_items:
        violations.add("excluded_item_ids", f"must hold at most {max_excluded_items} ids")
    for index, item_id in enumerate(query.excluded_item_ids):
        if item_id < 0:
            violations.add(f"excluded_item_ids[{index}]", "must be non-negative")
    violations.raise_if_any()
