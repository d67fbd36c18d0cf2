"""The files mfcbench writes into an experiment folder (`storage/name/`), by name, in one place:
harness writes them, reports read them (this module imports nothing, so reports stay free of Ray
and training code).

  mfcbench-sweep.yaml     the sweep file as run, with the resolved base and expanded trial list
                          (every path absolute)
  mfcbench-driver.lock    while a driver runs it: that driver's host, pid, start time and lease
                          (harness.sweep.lock)
  optuna.journal          the Optuna study (search sweeps; harness.sweep.tune.searcher): `optuna-dashboard optuna.journal`
  mlflow.db               with --tracker mlflow: `mlflow ui --backend-store-uri sqlite:///.../mlflow.db`
  mfcbench-grid-trials.json   grid sweeps: the expanded trial configs (with `pack`, the packed ones:
                          training.seeds); Tune's params hold only an index
  trial_<id>/mfcbench-trial.json   the trial's variant, overrides, config and every start (node, pid)
  trial_<id>/mfcbench-suggestion.json   search sweeps: what the searcher suggested the trial train
                          ({variant, trial}); Tune's params name the file
  trial_<id>/runs/seed<s>/   the trial's run folder, one per seed (one seed per trial, or each seed
                          of a packed trial): config.yaml (that seed's single-run config),
                          metrics.jsonl, checkpoint.pt, result.json, tensorboard/
  .../seed<s>/assignments.npz   the latest evaluation's cluster assignments, argmax_c q(c_j|x) per facet,
                          of the validation and test images (harness.agreement reads them)
  trial_<id>/mfcbench-stopped-early.json   written when the scheduler (ASHA) stopped the trial early
  trial_<id>/...          Ray Tune's own files: error.txt for a lost actor; with `ray_loggers: true`
                          also params.json, result.json, progress.csv and events
Run folders are written straight into a storage folder, which on a multi-node cluster every node
mounts; on bucket storage (harness.storage) the bucket holds this same layout, uploaded by each trial.
"""
SWEEP_FILE = "mfcbench-sweep.yaml"
SWEEP_FILE_EXPANSION = "# --- expanded by mfcbench ---"  # in SWEEP_FILE: the sweep file as given above it
LOCK_FILE = "mfcbench-driver.lock"
JOURNAL_FILE = "optuna.journal"
MLFLOW_FILE = "mlflow.db"
MLFLOW_ARTIFACTS = "mlflow-artifacts"
GRID_TRIALS_FILE = "mfcbench-grid-trials.json"
TRIAL_META = "mfcbench-trial.json"
SUGGESTION_FILE = "mfcbench-suggestion.json"
STOPPED_EARLY_FILE = "mfcbench-stopped-early.json"
ASSIGNMENTS_FILE = "assignments.npz"
# What a run folder holds: a folder with any of these is a run folder
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "result.json", ASSIGNMENTS_FILE)

def trial_folder(experiment_dir, trial_id: str):
    """The folder of a sweep trial: `<experiment_dir>/trial_<id>`."""
    from pathlib import Path

    return Path(experiment_dir) / f"trial_{trial_id}"


def run_folder(experiment_dir, trial_id: str, seed: int):
    """The run folder of one seed of a sweep trial (packed or not): `<experiment_dir>/trial_<id>/runs/seed<s>`."""
    return trial_folder(experiment_dir, trial_id) / "runs" / f"seed{seed}"


def __getattr__(name: str):
    """Names this module held before they moved to harness.compat (LEGACY_RUN_DEFAULTS, ...)."""
    if name.startswith("__"):
        raise AttributeError(name)
    import harness.compat

    return getattr(harness.compat, name)
