"""What a path argument must be, checked in one place before anything runs or is written.

Every path a command takes is one of three kinds: a file to read (`file_problem`), or a folder to
write in that may not exist yet (`folder_problem`, optionally one that must not lie inside a run
folder). Each returns why the path cannot serve, or None, so that callers can collect every problem
and report them together.
"""
from __future__ import annotations

import os
from pathlib import Path

from harness.layout import RUN_FILES


def _kind(path: Path) -> str:
    return "folder" if path.is_dir() else "file" if path.is_file() else "special file"


def file_problem(path: Path, what: str) -> str | None:
    """Why `path` is not a readable file (named `what` in the message), or None."""
    if not path.exists():
        return f"{what} {path}: no such file"
    if not path.is_file():
        return f"{what} {path} is a {_kind(path)}, not a file"
    if not os.access(path, os.R_OK):
        return f"{what} {path}: no permission to read it"
    return None


def enclosing_run_folder(path: Path) -> Path | None:
    """The run folder `path` lies in (not `path` itself), or None."""
    for parent in path.parents:
        if parent.is_dir() and any((parent / name).is_file() for name in RUN_FILES):
            return parent
    return None


def folder_problem(path: Path, what: str, outside_runs: bool = True) -> str | None:
    """Why a folder cannot be written at `path`, creating it (and its parents) if needed, or None:
    a file in the way, no permission, or (outside_runs) a run folder around it."""
    path = Path(os.path.abspath(path.expanduser()))
    if outside_runs and (run := enclosing_run_folder(path)) is not None:
        return f"{what} {path} lies inside the run folder {run}; choose a folder outside it"
    if path.exists():
        if not path.is_dir():
            return f"{what} {path} is a {_kind(path)}, not a folder"
        if not os.access(path, os.W_OK | os.X_OK):
            return f"{what} {path}: no permission to write there"
        return None
    ancestor = path.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{what} {path} cannot be created: {ancestor} is a {_kind(ancestor)}, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{what} {path} cannot be created: no permission to write in {ancestor}"
    return None
