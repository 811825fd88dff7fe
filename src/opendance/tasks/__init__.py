"""The task lifecycle and the money: the one place that changes a task's state or a balance."""
