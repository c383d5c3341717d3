"""Writing results: every file appears whole or not at all (write to a temporary, then rename)."""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def check_output_folder(path, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be made or written: ``path`` must
    be a writable folder, or not exist under a writable folder. Creates nothing. Raises
    ``ValueError`` naming ``option``, the path and the problem."""
    path = Path(path)
    problem = None
    for parent in (path, *path.parents):
        if not os.path.lexists(parent):
            continue
        if not parent.is_dir():
            problem = (f"{str(parent)!r} is a file, not a folder" if parent.exists()
                       else f"{str(parent)!r} is a broken link")
        elif not os.access(parent, os.W_OK | os.X_OK):
            problem = f"the folder {str(parent)!r} is not writable"
        break
    if problem is not None:
        raise ValueError(f"cannot write {option} {str(path)!r}: {problem}")
    return path


def atomic_write(path, write) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # as a plain open() would have made it
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure to ``path`` (format from its suffix) atomically."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=120,
                                                      bbox_inches="tight"))


def write_csv(path, rows: list[dict]) -> Path:
    """Write ``rows`` (dicts) as CSV with a header: the union of their keys, in first-seen order;
    a key absent from a row is left empty."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
