"""The code's layout (docs/architecture.md): module size, which layer imports which, and that what an
older mfcbench pickled (Tune's tuner.pkl, a searcher) still finds its classes after the move into
packages (harness.compat)."""
import ast
import importlib
import pickle
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
MAX_LINES = 400

# Every module-level name of the modules that moved into packages, as the last flat layout had them.
FLAT_LAYOUT_NAMES = {
    'harness.config': (
        'ConfigError', 'DEFAULT_OPTIMISER_STEPS', 'DatasetConfig',
        'EvaluationConfig', 'LEGACY_EPOCHS_PER_STEP', 'MIN_EPOCHS_PER_STEP', 'PRECISIONS', 'PRESETS_DIR',
        'RESUME_SAFE_KEYS', 'TrainingConfig', 'TrialConfig', '_flat', 'allowed_keys',
        'allowed_validation_fractions', 'apply_overrides', 'batches_per_epoch', 'data_limit_problems',
        'default_epochs_per_step', 'default_pretrain_epochs', 'differences', 'drop_replaced_seed_key',
        'dump', 'format_errors', 'fp16_on_cpu_message', 'load_trial_config', 'parse_override',
        'read_run_config', 'read_yaml', 'training_images', 'validate', 'with_legacy_defaults',
    ),
    'harness.trainer': (
        'EVAL_SEED_OFFSET', 'Reporter', 'Restored', 'ResumeFailed', 'Schedule', 'Setup', 'SplitEvaluation',
        'Trial', 'TrialFailed', '_evaluate_split', '_failure_message', '_finite_or_none',
        '_tensorboard_writer', 'choose_device', 'evaluate', 'non_finite_message', 'progress_bar',
        'provenance', 'read_metrics', 'run_trial', 'source_commit',
    ),
    'harness.packed': (
        'PackedTrial', 'SeedFailed', '_Pack', 'run_packed', 'seed_folder',
    ),
    'harness.precision': (
        'AUTOCAST_DTYPES', 'BF16_CPU_SLOWDOWN', 'Precision', 'PrecisionError', 'bf16_cpu_warning',
        'check_precision', 'cpu_has_bf16_instructions', 'gpu_has_bf16', 'refuse_before_writing',
    ),
    'harness.metrics': (
        'SILHOUETTE_SAMPLE', 'cluster_accuracy', 'clustering_metrics', 'contingency', 'hungarian_accuracy',
        'majority_accuracy', 'silhouette',
    ),
    'harness.trial_device': (
        'DeviceError', 'trial_device',
    ),
    'harness.sweep': (
        'AGREEMENT_PATTERN', 'BASELINE_METRIC_PATTERN', 'BASELINE_MODELS', 'DATASETS_WITHOUT_FILES',
        'EPOCHS_KEY', 'GridPacking', 'PATH_KEYS', 'PER_TRIAL_DEFAULTS', 'REMOTE_STORAGE', 'ResourcesConfig',
        'SEEDS_KEY', 'SEED_KEY', 'SILHOUETTE_PATTERN', 'SamplerConfig', 'SchedulerConfig', 'SearchConfig',
        'SearchParameter', 'SweepConfig', 'TEST_METRIC_PATTERN', 'TRAINED_MODELS', 'TRAINING_METRICS',
        'VALIDATION_PREFIX', '_absolute_dataset_name', '_checked_trial', '_concurrency_lines',
        '_device_problems', '_metric_problems', '_packing_problems', '_parse_sweep_file',
        '_search_packing_lines', '_selection_line', '_which_trials', '_with_absolute_paths',
        'absolute_path', 'balanced_chunks', 'check_metric_name', 'data_paths', 'describe',
        'effective_max_concurrent', 'experiment_name_problem', 'grid_points', 'is_agreement_metric',
        'is_test_metric', 'is_validation_metric', 'load_sweep', 'max_total_epochs', 'metric_problem',
        'objective_problem', 'objectives', 'pack_grid', 'replicate_groups', 'reported_objectives',
        'resolved_base', 'search_candidates', 'search_candidates_train', 'search_pack', 'set_path',
        'total_epochs', 'trials_per_suggestion', 'with_absolute_paths', 'with_overrides',
    ),
    'harness.sweep_checks': (
        'PICKLED_STATE', 'SweepError', 'SweepPlan', 'TRACKERS', '_create', '_pid_alive', '_remove_empty',
        '_user_name', 'check_before_start', 'driver_lock', 'is_stale', 'lock_problem', 'plan_sweep',
        'read_lock', 'untrusted_state',
    ),
    'harness.tune_runner': (
        'ANSI_CODE', 'CONNECT_WAIT_S', 'LOOPBACK_NODE_IP', 'PROGRESS_EVERY_S', '_error_summary',
        '_event_printer', '_failed', '_mlflow_callback', '_no_colour_unless_terminal', '_owner_only_writes',
        '_probe_address', '_ray_output', '_recorded_grid_trials', '_strip_ansi_from_ray_logs',
        '_tune_settings', 'check_cluster_fits', 'mlflow_tracking_uri', 'run_sweep', 'start_ray',
    ),
    'harness.tune_trial': (
        'PER_SEED_METRICS', 'PackReports', 'STATUS', '_mean', '_record_start', '_what_to_train',
        'config_to_resume', 'finite_metrics', 'reported_status', 'seed_key', 'seeds_text', 'train_packed',
        'trainable',
    ),
    'harness.search': (
        'ReplicatedOptunaSearch', '_distributions', 'asha_scheduler', 'open_study', 'stopped_early',
        'stopped_early_marker', 'trial_failed',
    ),
    'harness.preflight': (
        'PREFLIGHT_TIMEOUT_S', 'PROBE_PREFIX', 'alive_nodes', 'check_node', 'preflight',
    ),
    'harness.layout': (
        'ASSIGNMENTS_FILE', 'GRID_TRIALS_FILE', 'JOURNAL_FILE', 'LEGACY_RUN_DEFAULTS', 'LOCK_FILE',
        'MLFLOW_FILE', 'RUN_FILES', 'STOPPED_EARLY_FILE', 'SWEEP_FILE', 'TRIAL_META', 'run_folder',
        'trial_folder', 'with_legacy_run_defaults',
    ),
}


def _modules(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_no_source_module_is_over_the_line_limit():
    long = {str(p.relative_to(ROOT)): n for p in _modules("harness", "models", "reports")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _top_level_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_driver_side_never_imports_training_code():
    """Sweep files, checks and the Ray driver load without the trainer: only the worker (inside a trial)
    imports it, and the driver hands the worker's trainable to Tune with an import inside run_sweep."""
    training = ("harness.trial.single", "harness.trial.packed", "harness.trial.setup", "harness.trial.run",
                "harness.trial.evaluation", "harness.sweep.tune.worker", "models", "torch")
    driver_side = [p for p in _modules("harness/sweep") if p.name != "worker.py"]
    offenders = {f"{p.relative_to(ROOT)}: {name}" for p in driver_side for name in _top_level_imports(p)
                 if any(name == t or name.startswith(t + ".") for t in training)}
    assert offenders == set()


@pytest.mark.parametrize("old", sorted(FLAT_LAYOUT_NAMES))
def test_every_name_of_the_flat_layout_resolves_after_the_move(old):
    from harness.compat import install_legacy_modules

    install_legacy_modules()
    module = importlib.import_module(old)
    missing = [name for name in FLAT_LAYOUT_NAMES[old] if not hasattr(module, name)]
    assert missing == []


def test_configs_pickled_under_the_old_module_names_load():
    """Protocol 0 names a class as `c<module>\\n<name>`: the same bytes an older mfcbench wrote for
    its harness.sweep.SweepConfig (a searcher in tuner.pkl holds one) and harness.config.TrialConfig."""
    from harness.compat import install_legacy_modules
    from harness.sweep.load import load_sweep

    sweep, _ = load_sweep(ROOT / "sweeps" / "demo.yaml")
    now = pickle.dumps(sweep, protocol=0)
    assert b"charness.sweep.spec\nSweepConfig" in now
    before = now.replace(b"charness.sweep.spec\n", b"charness.sweep\n")
    install_legacy_modules()
    assert pickle.loads(before) == sweep

    from harness.trial.config_io import load_trial_config

    config = load_trial_config(None, ["model.latent_dims=[3]", "model.n_clusters=[4]"])
    now = pickle.dumps(config, protocol=0)
    assert b"charness.trial.config\nTrialConfig" in now
    assert pickle.loads(now.replace(b"charness.trial.config\n", b"charness.config\n")) == config
