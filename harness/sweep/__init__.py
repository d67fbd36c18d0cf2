"""A sweep as data: the sweep file's schema (spec), metric names, dotted overrides, expansion into trials
and packs (expand), loading and checking (load, checks), the dry-run text (describe). No Ray here: the
Ray Tune and Optuna glue is harness.sweep.tune."""


def __getattr__(name: str):
    """Names an older mfcbench pickled as `harness.sweep.<name>` (a searcher's SweepConfig), found
    where they live now (harness.compat)."""
    if name.startswith("__"):
        raise AttributeError(name)
    from harness.compat import legacy_attribute

    return legacy_attribute("harness.sweep", name)
