"""EventSink adapters."""
