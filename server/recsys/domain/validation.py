"""Request validation shared by every service; raises InvalidArgument naming each bad field."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from recsys.errors import FieldViolation, InvalidArgument

USER_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
COUNTRY_PATTERN = re.compile(r"^[A-Z]{2}$")
# BCP 47, loosely: language, optional script/region/variants, 35 characters at most.
LOCALE_PATTERN = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
CATEGORY_PATTERN = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")
EVENT_ID_PATTERN = re.compile(r"^[\x21-\x7e]{1,128}$")
# Surface names (configured in settings, carried by requests and events).
SURFACE_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_LOCALE_LENGTH = 35
# google.protobuf.Timestamp's documented range, 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
# (what a datetime holds): seconds since the Unix epoch, and nanoseconds within the second.
MIN_TIMESTAMP_SECONDS = -62_135_596_800
MAX_TIMESTAMP_SECONDS = 253_402_300_799
MAX_NANOS = 999_999_999


class Violations:
    """Collects every field violation of a request, then raises them together."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(field, description))

    def extend(self, violations: Iterable[FieldViolation]) -> None:
        self._violations.extend(violations)

    def __bool__(self) -> bool:
        return bool(self._violations)

    def raise_if_any(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)

    def check_user_id(self, field: str, user_id: str) -> None:
        if not user_id:
            self.add(field, "is required")
        elif not USER_ID_PATTERN.fullmatch(user_id):
            self.add(field, f"must match {USER_ID_PATTERN.pattern}")

    def check_item_id(self, field: str, item_id: int) -> None:
        if item_id < 0:
            self.add(field, "must be non-negative")

    def check_range(self, field: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            self.add(field, f"must be between {low} and {high}, got {value}")

    def check_finite(self, field: str, value: float) -> None:
        if not math.isfinite(value):
            self.add(field, "must be a finite number")

    def check_country(self, field: str, country: str) -> None:
        if country and not COUNTRY_PATTERN.fullmatch(country):
            self.add(field, "must be an ISO 3166-1 alpha-2 code in upper case, like US")

    def check_locale(self, field: str, locale: str) -> None:
        if locale and (len(locale) > MAX_LOCALE_LENGTH or not LOCALE_PATTERN.fullmatch(locale)):
            self.add(field, "must be a BCP 47 language tag of at most 35 characters, like en-US")

    def check_timestamp(self, field: str, seconds: int, nanos: int) -> None:
        """A protobuf Timestamp given as its two fields: within 0001-01-01..9999-12-31."""
        if not MIN_TIMESTAMP_SECONDS <= seconds <= MAX_TIMESTAMP_SECONDS:
            self.add(
                field,
                "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, "
                f"got {seconds} seconds",
            )
        if not 0 <= nanos <= MAX_NANOS:
            self.add(field, f"nanos must be between 0 and {MAX_NANOS}, got {nanos}")
