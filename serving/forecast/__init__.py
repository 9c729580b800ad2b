"""Forecasts: dynamic batching across requests and stateful forecast sessions."""
