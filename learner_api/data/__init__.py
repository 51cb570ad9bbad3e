"""Data access: SQL lives here, one module per resource, keyword-only arguments, no HTTP types."""
