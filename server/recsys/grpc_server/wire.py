"""Where a protobuf message that failed to decode goes wrong: a walk of its wire format.

Protobuf's parser says only that a message could not be parsed. `locate` walks the bytes with
the message's descriptor and names the first field whose bytes are broken (a truncated value, a
string that is not UTF-8, a malformed tag) by its path, such as `events[3].user_id`. It runs
only on bytes the parser refused, so it trusts nothing; it returns None when it finds no fault
(a limit of the parser it does not model) or gives up (MAX_STEPS), and never raises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from google.protobuf.descriptor import Descriptor, FieldDescriptor

# Protobuf's default recursion limit for nested messages and groups.
MAX_DEPTH = 100
# The walk is Python, about a microsecond a step: past this many fields and values it gives up
# (None) rather than hold the event loop for seconds on a few megabytes of bytes.
MAX_STEPS = 50_000
_MAX_VARINT_BYTES = 10
_MAX_FIELD_NUMBER = 2**29 - 1

_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = range(6)
_FIXED_SIZES = {_FIXED64: 8, _FIXED32: 4}
_PACKED_FIXED_SIZES = {
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
}
_LENGTH_DELIMITED_TYPES = {
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_MESSAGE,
}


@dataclass(frozen=True, slots=True)
class WireFault:
    """`field`: the path of the broken field, or of its message ("" for the request itself)."""

    field: str
    description: str


class _Broken(Exception):
    def __init__(self, fault: WireFault) -> None:
        super().__init__(fault.description)
        self.fault = fault


@dataclass(frozen=True, slots=True)
class _Where:
    """Where a fault is reported: a known field by its path; an unknown one on its message,
    with its number in the description."""

    path: str
    label: str = ""

    def broken(self, problem: str) -> _Broken:
        return _Broken(WireFault(self.path, self.label + problem))


class _OutOfSteps(Exception):
    pass


def locate(descriptor: Descriptor, data: bytes, *, max_steps: int = MAX_STEPS) -> WireFault | None:
    """The first fault of `data` as an encoding of `descriptor`'s message; None if there is
    none, or none within the first `max_steps` fields and values."""
    walk = _Walk(memoryview(data), max_steps)
    try:
        walk.message(descriptor, 0, len(data), "", 0, None)
    except _Broken as broken:
        return broken.fault
    except (_OutOfSteps, RecursionError):
        return None
    return None


class _Walk:
    def __init__(self, data: memoryview, max_steps: int) -> None:
        self.data = data
        self.steps_left = max_steps

    def varint(self, position: int, end: int, where: _Where) -> tuple[int, int]:
        """The varint at `position` and the position after it."""
        self.steps_left -= 1
        if self.steps_left < 0:
            raise _OutOfSteps
        result = shift = 0
        for index in range(position, min(end, position + _MAX_VARINT_BYTES)):
            byte = self.data[index]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result, index + 1
            shift += 7
        problem = "is truncated" if end - position < _MAX_VARINT_BYTES else "is malformed"
        raise where.broken(problem)

    def message(
        self,
        descriptor: Descriptor | None,
        position: int,
        end: int,
        path: str,
        depth: int,
        group: int | None,
    ) -> int:
        """Walks one message (or group) in data[position:end]; returns where it ended."""
        here = _Where(path)
        if depth > MAX_DEPTH:
            raise here.broken(f"nests messages more than {MAX_DEPTH} deep")
        occurrences: Counter[int] = Counter()
        while position < end:
            tag, position = self.varint(position, end, _Where(path, "a field tag "))
            number, wire_type = tag >> 3, tag & 7
            if not 0 < number <= _MAX_FIELD_NUMBER or tag >= 2**32:
                raise here.broken(f"has a field tag with the invalid field number {number}")
            if wire_type == _END_GROUP:
                if group == number:
                    return position
                raise here.broken(f"ends group {number}, which was never started")
            field = descriptor.fields_by_number.get(number) if descriptor is not None else None
            where = _field_where(path, field, number, wire_type, occurrences)
            position = self.value(field, wire_type, number, position, end, where, depth)
        if group is not None:
            raise here.broken(f"ends inside group {group}")
        return position

    def value(
        self,
        field: FieldDescriptor | None,
        wire_type: int,
        number: int,
        position: int,
        end: int,
        where: _Where,
        depth: int,
    ) -> int:
        """Walks one field's value; returns where it ended."""
        if wire_type == _VARINT:
            return self.varint(position, end, where)[1]
        if wire_type in _FIXED_SIZES:
            stop = position + _FIXED_SIZES[wire_type]
            if stop > end:
                raise where.broken("is truncated")
            return stop
        if wire_type == _START_GROUP:
            is_group = field is not None and field.type == FieldDescriptor.TYPE_GROUP
            nested = field.message_type if field is not None and is_group else None
            return self.message(nested, position, end, where.path, depth + 1, number)
        if wire_type != _LENGTH_DELIMITED:
            raise where.broken(f"has the invalid wire type {wire_type}")
        length, position = self.varint(position, end, where)
        stop = position + length
        if stop > end:
            raise where.broken("is truncated")
        if field is None:
            return stop
        if field.type == FieldDescriptor.TYPE_STRING:
            try:
                str(self.data[position:stop], "utf-8")
            except UnicodeDecodeError:
                raise where.broken("is not valid UTF-8") from None
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            self.message(field.message_type, position, stop, where.path, depth + 1, None)
        elif _packable(field):
            self.packed(field, position, stop, where)
        return stop

    def packed(self, field: FieldDescriptor, position: int, stop: int, where: _Where) -> None:
        size = _PACKED_FIXED_SIZES.get(field.type)
        if size is not None:
            if (stop - position) % size:
                raise where.broken("is truncated")
            return
        while position < stop:
            _, position = self.varint(position, stop, where)


def _field_where(
    path: str,
    field: FieldDescriptor | None,
    number: int,
    wire_type: int,
    occurrences: Counter[int],
) -> _Where:
    """A known field by its path (one element of a repeated field with its index), an unknown
    one on its message."""
    if field is None:
        return _Where(path, f"field number {number} ")
    name = f"{path}.{field.name}" if path else field.name
    if field.is_repeated and not (wire_type == _LENGTH_DELIMITED and _packable(field)):
        name = f"{name}[{occurrences[number]}]"
        occurrences[number] += 1
    return _Where(name)


def _packable(field: FieldDescriptor) -> bool:
    return field.is_repeated and field.type not in _LENGTH_DELIMITED_TYPES
