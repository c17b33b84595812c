"""The chat screen's widgets, one module per area."""
