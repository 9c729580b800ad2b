"""The HTTP layer: routes, SSE framing, error mapping and request schemas (translation only)."""
