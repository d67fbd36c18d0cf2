"""mfcbench's harness: data, the single-trial trainer, metrics, sweeps and the command line."""
__version__ = "0.1.0"
