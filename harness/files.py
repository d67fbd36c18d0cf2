"""Writing files so that a kill mid-write never leaves half of one: a temporary file, then a rename."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_json_atomic(path: Path, data, indent: int | None = 2) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str))
    os.replace(tmp, path)
