"""Re-base a candidate onto a newer best: the candidate's change, three-way merged onto the best's editable files."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from autoresearch.workspace import Workspace


def merge_file(ours: str, base: str, theirs: str) -> tuple[str, int]:
    """`git merge-file` of three texts: the merge, conflicting hunks resolved to `theirs`, and how many conflicted."""
    with tempfile.TemporaryDirectory(prefix="autoresearch-merge-") as tmp:
        paths = []
        for name, text in (("ours", ours), ("base", base), ("theirs", theirs)):
            path = Path(tmp) / name
            path.write_text(text, encoding="utf-8")
            paths.append(str(path))
        counted = subprocess.run(["git", "merge-file", "-p", "-q", *paths], capture_output=True)
        resolved = subprocess.run(["git", "merge-file", "-p", "-q", "--theirs", *paths], capture_output=True, check=True)
    return resolved.stdout.decode("utf-8", "replace"), max(0, counted.returncode)


def merge_onto(ws: Workspace, base: str, best: str, candidate: str) -> tuple[dict[str, str], int]:
    """The files to write on top of `best` so that it carries the change `base` → `candidate`: every editable file
    the candidate changed, merged with what `best` changed since `base`; and the number of hunks that conflicted
    (taken from the candidate, whose change was measured as an improvement)."""
    old, ours, theirs = (ws.read_editable_at(c) for c in (base, best, candidate))
    files, conflicts = {}, 0
    for path in sorted(theirs):
        if theirs[path] == old.get(path):
            continue  # the candidate left it alone
        if path not in old or path not in ours or ours[path] == old[path]:
            merged = theirs[path]
        else:
            merged, n = merge_file(ours[path], old[path], theirs[path])
            conflicts += n
        if merged != ours.get(path):
            files[path] = merged
    return files, conflicts
