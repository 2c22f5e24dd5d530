"""Output directories that never lose a user's files: interp replaces only what it wrote itself, and only when
asked to (``overwrite``).

A report directory (``interp demo --out``) is built under a temporary name next to its destination and moved into
place when complete; it carries a marker file listing what interp wrote there. A non-empty directory without that
marker is refused; an earlier report is replaced only with ``overwrite``, and then only the files its marker
lists are removed (anything a user added stays). ``interp run --out`` writes its table and figure files
atomically and refuses to replace an earlier run's files without ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import InterpError

MARKER = ".interp-output.json"


class OutputDirectoryError(InterpError):
    """An output directory that interp will not write into as asked (it would replace files it did not write)."""


def _marker(directory: Path) -> dict | None:
    path = directory / MARKER
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("files"), list) else None


def check_report_dir(out: Path, kind: str, *, overwrite: bool) -> None:
    """Refuse, before any compute, an ``out`` that a new report of ``kind`` may not be written into."""
    if out.exists() and not out.is_dir():
        raise OutputDirectoryError(f"--out {str(out)!r} is a file; give a directory.")
    if not out.exists() or not any(out.iterdir()):
        return
    marker = _marker(out)
    if marker is None or marker.get("kind") != kind:
        raise OutputDirectoryError(f"--out {str(out)!r} is a non-empty directory that holds no earlier {kind} report "
                                   "of interp's; it is left alone: give a new or empty directory.")
    if not overwrite:
        raise OutputDirectoryError(f"--out {str(out)!r} holds an earlier {kind} report; pass --overwrite to replace "
                                   "it (only the files interp wrote there are replaced).")


def publish_report(out: Path, kind: str, build: Callable[[Path], object], *, overwrite: bool) -> None:
    """Build a report into a temporary directory with ``build(tmp_dir)``, then move it into ``out`` (see the module
    docstring); ``out`` is checked first and is never left half-written by a failed build."""
    out = Path(out)
    check_report_dir(out, kind, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        build(tmp)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        (tmp / MARKER).write_text(json.dumps({"kind": kind, "files": files}, indent=1))
        if not out.exists():
            os.replace(tmp, out)
            return
        if not any(out.iterdir()):
            out.rmdir()
            os.replace(tmp, out)
            return
        old = _marker(out) or {"files": []}
        _remove_listed(out, old["files"])
        for rel in [*files, MARKER]:
            dest = out / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / rel, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_listed(directory: Path, files: Iterable[str]) -> None:
    root = directory.resolve()
    for rel in files:
        path = (directory / rel).resolve()
        if root not in path.parents:  # a marker naming a file outside the report: ignore it
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only directories left empty


def check_result_files(paths: Iterable[Path], *, overwrite: bool, what: str) -> None:
    """Refuse, before any compute, to replace an earlier run's files without ``overwrite``."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(p.name for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputDirectoryError(f"{existing[0].parent}: already holds {what} ({shown}); pass --overwrite to "
                                   "replace them.")
