"""Callbacks: the durable outbox, Standard Webhooks signing, and SSRF-safe delivery."""
