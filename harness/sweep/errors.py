"""The error a sweep's checks raise (harness.sweep.checks, harness.sweep.lock, the Ray driver)."""


class SweepError(RuntimeError):
    """A sweep cannot start or go on; the message names what is wrong. Nothing on disk was changed."""
