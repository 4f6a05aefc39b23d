"""The adapter registry: short names resolve lazily; unknown names fail with a clear message."""

from __future__ import annotations

import pytest

from recsys import registry
from recsys.adapters.events.in_memory import InMemoryEventSink
from recsys.errors import ConfigurationError
from recsys.settings import load_settings


def test_known_adapter_is_built_from_settings() -> None:
    settings = load_settings(ingest={"in_memory_capacity": 7})
    sink = registry.create_adapter("event_sink", "in_memory", settings)
    assert isinstance(sink, InMemoryEventSink)


@pytest.mark.parametrize(("port", "name"), [("event_sink", "carrier_pigeon"), ("nope", "x")])
def test_unknown_adapter_or_port(port: str, name: str) -> None:
    with pytest.raises(ConfigurationError, match="unknown"):
        registry.resolve_adapter(port, name)


def test_every_registered_adapter_imports() -> None:
    for port, names in registry.ADAPTERS.items():
        for name in names:
            assert registry.resolve_adapter(port, name).from_settings
