"""Dispatch: who runs tasks. In-process worker threads on one machine; a queue engine for many."""
