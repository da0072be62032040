"""Sinks: one module per output, each consuming events through `events.Sink`."""
