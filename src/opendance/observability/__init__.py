"""Signals for operators: request ids, structured logs, Prometheus metrics."""
