"""Where an experiment lives: a folder every node mounts (POSIX), or a bucket (`s3://`, `gs://`, any
URI pyarrow.fs.FileSystem.from_uri opens).

On a bucket nothing is written in place. Each process works in a node-local copy of the part it
needs (`local_copy`: $MFCBENCH_CACHE, default ~/.cache/mfcbench, then buckets/<scheme>/<bucket>/<path>)
and moves files between it and the bucket through pyarrow, which reads credentials and an
S3-compatible endpoint from the standard environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_DEFAULT_REGION; for gs:// the Google application credentials), as boto3
and the AWS CLI do. The bucket holds the same layout as a POSIX experiment folder (harness.layout):
a trial uploads its `trial_<id>/` folder (`FolderUpload`) and a retried or resumed trial downloads it
first, so reports and resumes read a bucket experiment as they read a folder, once downloaded.

This module imports no training code and no Ray: the driver, the workers and reports share it.
"""
from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable

BUCKET_URI = re.compile(r"^(?!file://)[A-Za-z][A-Za-z0-9+.-]*://")
# Uploaded after every other file of a run folder, in this order: a kill part-way leaves the
# bucket as a kill part-way through RunFolder's own writes would leave a folder (harness.trial.run).
WRITTEN_LAST = ("checkpoint.pt", "result.json")
SKIPPED_SUFFIXES = (".tmp",)  # a file being replaced (RunFolder writes checkpoint.pt.tmp, then renames)
# Seconds between two uploads of a trial's folder while it trains: each evaluation writes
# checkpoint.pt, and a GPU trial evaluates every few seconds. Its last report always uploads.
PERSIST_EVERY_S = 60.0


def is_bucket(location: str | Path) -> bool:
    return bool(BUCKET_URI.match(str(location)))


def join(location: str | Path, *parts: str) -> str:
    """`location/part/...` for a folder or a bucket URI alike."""
    if is_bucket(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(location, *parts))


def cache_root() -> Path:
    return Path(os.environ.get("MFCBENCH_CACHE") or Path.home() / ".cache" / "mfcbench")


def local_copy(uri: str, purpose: str = "work") -> Path:
    """The node-local folder that stands for bucket `uri` (purpose keeps a report's download apart
    from a running driver's copy on the same machine)."""
    scheme, rest = uri.split("://", 1)
    parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
    return cache_root() / "buckets" / purpose / scheme / Path(*parts)


class Bucket:
    """One folder of a bucket, `uri`, through pyarrow.fs: paths given relative to it use "/"."""

    def __init__(self, uri: str):
        from pyarrow import fs

        self.uri = uri.rstrip("/")
        self.fs, self.root = fs.FileSystem.from_uri(self.uri)
        self.root = self.root.rstrip("/")

    def _path(self, relative: str = "") -> str:
        return f"{self.root}/{relative}".rstrip("/") if relative else self.root

    def problem(self) -> str | None:
        """Why this bucket cannot hold experiments (missing, no access, no endpoint), or None."""
        from pyarrow import fs

        bucket = self.root.split("/", 1)[0]
        try:
            info = self.fs.get_file_info(bucket)
        except OSError as error:
            return f"storage {self.uri}: cannot reach the bucket ({error})"
        if info.type == fs.FileType.NotFound:
            return (f"storage {self.uri}: bucket {bucket!r} not found (create it first; the endpoint and "
                    "credentials come from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ... in the environment)")
        return None

    def exists(self, relative: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(self._path(relative)).type != fs.FileType.NotFound

    def files(self, under: str = "", recursive: bool = True) -> dict[str, tuple[int, int]]:
        """{path relative to the bucket folder: (size, mtime_ns)} of every file under `under`."""
        from pyarrow import fs

        selector = fs.FileSelector(self._path(under), recursive=recursive, allow_not_found=True)
        return {info.path[len(self.root) + 1:]: (info.size, info.mtime_ns or 0)
                for info in self.fs.get_file_info(selector) if info.type == fs.FileType.File}

    def read_text(self, relative: str) -> str:
        with self.fs.open_input_stream(self._path(relative)) as f:
            return f.read().decode()

    def write_text(self, relative: str, text: str) -> None:
        with self.fs.open_output_stream(self._path(relative)) as f:
            f.write(text.encode())

    def delete(self, relative: str) -> None:
        self.fs.delete_file(self._path(relative))

    def upload(self, local_root: Path, files: Iterable[Path]) -> None:
        """Each file (inside local_root) to the same relative path in the bucket, in the order given."""
        for path in files:
            relative = path.relative_to(local_root).as_posix()
            with open(path, "rb") as source, self.fs.open_output_stream(self._path(relative)) as target:
                shutil.copyfileobj(source, target, length=1 << 22)

    def download(self, local_root: Path, under: str = "", recursive: bool = True, keep: tuple[str, ...] = ()) -> int:
        """Make local_root/under what the bucket holds there, every file under it (recursive) or only the
        files directly in it; anything else there is removed, except the names in `keep`. Returns the
        number of files downloaded."""
        target = local_root / under if under else local_root
        remote = self.files(under, recursive)
        if target.is_dir():
            for path in (list(target.rglob("*")) if recursive else list(target.iterdir())):
                if path.name in keep or path.relative_to(local_root).as_posix() in remote:
                    continue
                if path.is_dir() and not path.is_symlink():
                    if not recursive:
                        shutil.rmtree(path)
                elif path.exists() or path.is_symlink():
                    path.unlink()
        for relative in remote:
            path = local_root / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + ".download.tmp")
            with self.fs.open_input_stream(self._path(relative)) as source, open(partial, "wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 22)
            os.replace(partial, path)  # a reader (an open Optuna journal) never sees half a file
        return len(remote)


def bucket_problem(uri: str, timeout_s: float = 30.0) -> str | None:
    """Why `uri` cannot hold experiments, or None; an endpoint that does not answer within timeout_s
    (pyarrow retries for minutes) is named as such rather than waited for."""
    answer: list = []

    def ask() -> None:
        try:
            answer.append(Bucket(uri).problem())
        except (OSError, ValueError) as error:  # an unknown scheme, no credentials, a bad endpoint
            answer.append(f"storage {uri}: {error}")

    thread = threading.Thread(target=ask, daemon=True)  # left behind if the endpoint never answers
    thread.start()
    thread.join(timeout_s)
    if not answer:
        return (f"storage {uri}: the bucket did not answer within {timeout_s:g} s (check the network, "
                "AWS_ENDPOINT_URL and the credentials in the environment)")
    return answer[0]


def upload_order(files: Iterable[Path]) -> list[Path]:
    """Every other file first, then each run folder's WRITTEN_LAST files, checkpoint before result."""
    return sorted(files, key=lambda p: (WRITTEN_LAST.index(p.name) + 1 if p.name in WRITTEN_LAST else 0, str(p)))


class FolderUpload:
    """Keeps a bucket's copy of one local folder current: each call uploads the files that changed
    since the last upload (in upload_order), at most once every `every_s` seconds unless `final`.
    What the folder holds when it is made counts as uploaded (it was just downloaded)."""

    def __init__(self, bucket: Bucket, local_root: Path, folder: Path, every_s: float = PERSIST_EVERY_S):
        self.bucket, self.local_root, self.folder, self.every_s = bucket, local_root, folder, every_s
        self.sent = dict(self._files())
        self.last = float("-inf")

    def _files(self) -> list[tuple[Path, tuple[int, int]]]:
        if not self.folder.is_dir():
            return []
        return [(path, (info.st_size, info.st_mtime_ns)) for path in self.folder.rglob("*")
                if path.is_file() and not path.name.endswith(SKIPPED_SUFFIXES) and (info := path.stat())]

    def __call__(self, final: bool = False) -> int:
        """Uploads what changed, then deletes from the bucket the files it had that the folder no longer
        holds (a packed trial clears the folders of seeds it trains again); returns the files uploaded."""
        if not final and time.monotonic() - self.last < self.every_s:
            return 0
        files = self._files()
        changed = [(path, state) for path, state in files if self.sent.get(path) != state]
        self.bucket.upload(self.local_root, upload_order(p for p, _ in changed))
        self.sent.update(changed)
        # Only files this trial downloaded or uploaded: the driver writes into the folder too (Tune's
        # error.txt and error.pkl, the stopped-early marker), and those are not this copy's to delete.
        for path in [path for path in self.sent if not path.exists()]:
            self.bucket.delete(path.relative_to(self.local_root).as_posix())
            del self.sent[path]
        self.last = time.monotonic()
        return len(changed)

    def discard(self) -> None:
        """The local folder, once its last upload is done (the node's disk is not the trial's store)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class InPlace:
    """A trial's persist on a storage folder: its run folders are written in place."""

    def __call__(self, final: bool = False) -> int:
        return 0

    def discard(self) -> None:
        pass


def trial_copy(location: str, trial_id: str) -> tuple[Path, FolderUpload | InPlace]:
    """(the experiment folder a trial writes into, its persist). On a storage folder: that folder and
    InPlace. On a bucket: this node's copy, with the trial's folder first made what the bucket holds
    (what an earlier start of the trial uploaded: a retry or a resume continues from there), and a
    FolderUpload every MFCBENCH_PERSIST_S seconds (default PERSIST_EVERY_S)."""
    if not is_bucket(location):
        return Path(location), InPlace()
    bucket, local = Bucket(location), local_copy(location)
    folder = local / f"trial_{trial_id}"  # harness.layout.trial_folder
    shutil.rmtree(folder, ignore_errors=True)
    bucket.download(local, folder.name)
    every_s = float(os.environ.get("MFCBENCH_PERSIST_S") or PERSIST_EVERY_S)
    return local, FolderUpload(bucket, local, folder, every_s)


def write_text(location: str, relative: str, text: str) -> None:
    """One small file at `location/relative`, in a folder or a bucket (the driver's markers)."""
    if is_bucket(location):
        Bucket(location).write_text(relative, text)
        return
    path = Path(location, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
