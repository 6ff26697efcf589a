"""Writing a local file atomically: a reader, or a run killed mid-write, finds the old file or the
new one, never half of one. (The study's store does the same through its own filesystem.)"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(target: str | Path, data: bytes) -> None:
    """Write `data` to `target` via a temp file in the same folder, moved over it."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as temp_file:
            temp_file.write(data)
        os.replace(temp_name, target)
    except BaseException:
        os.unlink(temp_name)
        raise
