"""The rules of protobuf's well-known types that its parser does not enforce.

A google.protobuf.Timestamp decodes whatever its two fields hold, but only 0001-01-01 to
9999-12-31 with nanos in 0..999,999,999 is a Timestamp (`ToDatetime` raises ValueError on the
rest). `check_message` finds every such field of a decoded request, at any depth, and raises
InvalidArgument naming each by its path (`context.request_time`, `events[3].event_time`).

It runs on every request, so it is built once per message type: only the fields through which a
checked type can be reached are visited, and a fast pass that only tests the values runs first;
the paths are worked out only for a request that breaks a rule.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from recsys.domain.validation import (
    MAX_NANOS,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    Violations,
)


@dataclass(frozen=True, slots=True)
class Rule:
    """`holds`: the fast test of a value; `report`: its violations, under a field path."""

    holds: Callable[[Any], bool]
    report: Callable[[Violations, str, Any], None]


def _timestamp_holds(timestamp: timestamp_pb2.Timestamp) -> bool:
    return (
        MIN_TIMESTAMP_SECONDS <= timestamp.seconds <= MAX_TIMESTAMP_SECONDS
        and 0 <= timestamp.nanos <= MAX_NANOS
    )


def _report_timestamp(violations: Violations, field: str, timestamp: Any) -> None:
    violations.check_timestamp(field, timestamp.seconds, timestamp.nanos)


# By full message name.
RULES: Mapping[str, Rule] = {
    timestamp_pb2.Timestamp.DESCRIPTOR.full_name: Rule(_timestamp_holds, _report_timestamp),
}


def check_message(message: Message) -> None:
    """Raises InvalidArgument naming every field of `message` that breaks a rule."""
    if _holds(message.DESCRIPTOR)(message):
        return
    violations = Violations()
    _report(message, "", violations)
    violations.raise_if_any()


class _Kind(enum.Enum):
    SINGLE = "single"
    REPEATED = "repeated"
    MAP = "map"


@dataclass(frozen=True, slots=True)
class _Step:
    """A message field through which a checked type is reached; `nested` is its message type
    (a map's value type)."""

    name: str
    kind: _Kind
    nested: Descriptor


def _items(message: Any, step: _Step) -> Iterator[tuple[str, Any]]:
    """(suffix of the path, value) of each value of the field."""
    value = getattr(message, step.name)
    if step.kind is _Kind.SINGLE:
        if message.HasField(step.name):
            yield "", value
    elif step.kind is _Kind.REPEATED:
        for index, item in enumerate(value):
            yield f"[{index}]", item
    else:
        for key, item in value.items():
            yield f"[{key}]", item


@functools.cache
def _steps(descriptor: Descriptor) -> tuple[_Step, ...]:
    steps = []
    for field in descriptor.fields:
        nested = field.message_type
        if nested is None:
            continue
        kind = _Kind.REPEATED if field.is_repeated else _Kind.SINGLE
        if nested.GetOptions().map_entry:
            kind, nested = _Kind.MAP, nested.fields_by_name["value"].message_type
            if nested is None:
                continue
        if _reaches_rule(nested):
            steps.append(_Step(field.name, kind, nested))
    return tuple(steps)


@functools.cache
def _reaches_rule(descriptor: Descriptor) -> bool:
    seen = {descriptor.full_name}
    pending = [descriptor]
    while pending:
        current = pending.pop()
        if current.full_name in RULES:
            return True
        for field in current.fields:
            nested = field.message_type
            if nested is not None and nested.full_name not in seen:
                seen.add(nested.full_name)
                pending.append(nested)
    return False


@functools.cache
def _holds(descriptor: Descriptor) -> Callable[[Any], bool]:
    """The fast pass for one message type: whether every rule holds."""
    rule = RULES.get(descriptor.full_name)
    if rule is not None:
        return rule.holds
    steps = _steps(descriptor)
    if not steps:
        return lambda message: True

    # The nested tests are looked up on the first call, not now: a type may contain itself.
    nested: list[Callable[[Any], bool]] = []

    def holds(message: Any) -> bool:
        if not nested:
            nested.extend(_holds(step.nested) for step in steps)
        for step, nested_holds in zip(steps, nested, strict=True):
            value = getattr(message, step.name)
            if step.kind is _Kind.SINGLE:
                if message.HasField(step.name) and not nested_holds(value):
                    return False
            else:
                items = value.values() if step.kind is _Kind.MAP else value
                if not all(map(nested_holds, items)):
                    return False
        return True

    return holds


def _report(message: Any, path: str, violations: Violations) -> None:
    rule = RULES.get(message.DESCRIPTOR.full_name)
    if rule is not None:
        rule.report(violations, path, message)
        return
    for step in _steps(message.DESCRIPTOR):
        name = f"{path}.{step.name}" if path else step.name
        for suffix, item in _items(message, step):
            _report(item, name + suffix, violations)
