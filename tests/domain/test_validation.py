"""Validation rules as properties (hypothesis) and examples."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recsys.domain.interactions import Interaction, InteractionKind, validate_interactions
from recsys.domain.requests import RecommendQuery, RequestContext, validate_recommend_query
from recsys.domain.validation import (
    MAX_NANOS,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    USER_ID_PATTERN,
    Violations,
)
from recsys.errors import InvalidArgument

SURFACES = ("homepage", "search")
USER_ID_ALPHABET = "abcXYZ019_.:@-"


def query(**changes: object) -> RecommendQuery:
    fields: dict[str, object] = {
        "user_id": "user_1",
        "surface": "homepage",
        "limit": 10,
        "context": RequestContext(),
    }
    fields.update(changes)
    return RecommendQuery(**fields)  # type: ignore[arg-type]


def violated_fields(candidate: RecommendQuery) -> list[str]:
    try:
        validate_recommend_query(candidate, surfaces=SURFACES, categories=(), max_excluded_items=5)
    except InvalidArgument as error:
        return [violation.field for violation in error.violations]
    return []


@given(st.text(alphabet=USER_ID_ALPHABET, min_size=1, max_size=128))
def test_well_formed_user_ids_pass(user_id: str) -> None:
    assert violated_fields(query(user_id=user_id)) == []


@given(st.text(max_size=200))
def test_user_id_rule_matches_the_documented_pattern(user_id: str) -> None:
    expected_valid = USER_ID_PATTERN.fullmatch(user_id) is not None
    assert ("user_id" not in violated_fields(query(user_id=user_id))) == expected_valid


@given(st.integers(min_value=-(2**31), max_value=2**31 - 1))
def test_limit_is_accepted_exactly_in_1_to_100(limit: int) -> None:
    assert ("limit" in violated_fields(query(limit=limit))) == (not 1 <= limit <= 100)


def test_user_id_pattern_rejects_newlines_at_the_end() -> None:
    assert violated_fields(query(user_id="user_1\n")) == ["user_id"]


def test_unknown_category_is_refused_when_a_whitelist_is_configured() -> None:
    candidate = query(context=RequestContext(category="Horror"))
    with pytest.raises(InvalidArgument) as caught:
        validate_recommend_query(
            candidate, surfaces=SURFACES, categories=("Action",), max_excluded_items=5
        )
    assert [v.field for v in caught.value.violations] == ["context.category"]


def test_too_many_excluded_items() -> None:
    assert violated_fields(query(excluded_item_ids=tuple(range(6)))) == ["excluded_item_ids"]


def test_violations_raise_nothing_when_empty() -> None:
    Violations().raise_if_any()
    with pytest.raises(ValueError, match="at least one"):
        InvalidArgument([])


def test_interactions_need_a_time_and_a_kind() -> None:
    good = Interaction("e1", "u1", 1, InteractionKind.LIKE, 1.0, dt.datetime.now(dt.UTC))
    validate_interactions([good], max_batch_size=10)
    bad = Interaction("e2", "u1", 1, None, float("inf"), None, surface="Bad Surface")
    with pytest.raises(InvalidArgument) as caught:
        validate_interactions([good, bad], max_batch_size=10)
    assert [v.field for v in caught.value.violations] == [
        "events[1].type",
        "events[1].value",
        "events[1].event_time",
        "events[1].surface",
    ]


def timestamp_violations(seconds: int, nanos: int) -> list[tuple[str, str]]:
    violations = Violations()
    violations.check_timestamp("when", seconds, nanos)
    try:
        violations.raise_if_any()
    except InvalidArgument as error:
        return [(v.field, v.description) for v in error.violations]
    return []


@given(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_timestamps_are_accepted_exactly_where_a_datetime_holds_them(
    seconds: int, nanos: int
) -> None:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    try:
        epoch + dt.timedelta(seconds=seconds)
        in_range = True
    except OverflowError:
        in_range = False
    expected = int(not in_range) + int(not 0 <= nanos <= MAX_NANOS)
    assert len(timestamp_violations(seconds, nanos)) == expected


def test_timestamp_bounds_are_the_first_and_last_second_of_0001_to_9999() -> None:
    assert timestamp_violations(MIN_TIMESTAMP_SECONDS, 0) == []
    assert timestamp_violations(MAX_TIMESTAMP_SECONDS, MAX_NANOS) == []
    assert timestamp_violations(MAX_TIMESTAMP_SECONDS + 1, 0) == [
        (
            "when",
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z, "
            "got 253402300800 seconds",
        )
    ]
    assert timestamp_violations(0, -5) == [
        ("when", "nanos must be between 0 and 999999999, got -5")
    ]
    assert len(timestamp_violations(MIN_TIMESTAMP_SECONDS - 1, MAX_NANOS + 1)) == 2
