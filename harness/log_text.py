"""How numbers look in log lines, the same in `mfcbench train` and in a sweep's progress."""
from __future__ import annotations

from typing import Any


def significant(value: Any, digits: int = 4) -> str:
    """Floats at `digits` significant digits (an alpha prints as 0.0002, not 0.00019999999494757503)."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def clock(seconds: float) -> str:
    """hh:mm:ss, for durations and ETAs."""
    seconds = int(round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
