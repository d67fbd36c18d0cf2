"""Why a trial stops without a result; the messages a failure record (result.json) carries."""
from __future__ import annotations


class TrialFailed(RuntimeError):
    """The trial stopped without a result (non-finite loss, bad data); result.json says why."""


class ResumeFailed(TrialFailed):
    """The run cannot be continued; its folder was left exactly as it was."""


class SeedFailed(TrialFailed):
    """Raised by a reporter (harness.sweep.tune.worker's PackReports: a required metric not finite) to
    fail the one seed whose evaluation it was given: in a pack that seed's result.json records the
    failure and it leaves the pack, whose other seeds go on. Outside a pack it is a TrialFailed like
    any other."""


def failure_message(error: Exception) -> str:
    """A TrialFailed's own words; anything else with its type, which is often all that says what broke."""
    return str(error) if isinstance(error, TrialFailed) else f"{type(error).__name__}: {error}"


def non_finite_message(epoch: int, step: int) -> str:
    """The failure record of a run whose loss went non-finite in 0-based `epoch`."""
    return (f"non-finite loss in epoch {epoch + 1} (steps up to {step}); "
            "try a lower training.lr or a larger model.prior_variance_init")
