"""Parse an LLM's reply into file edits (SEARCH/REPLACE blocks or whole files) and apply them to the files.

The reply format is the one `prompt.BLOCK_FORMAT` asks for, read leniently: blocks may be fenced or bare, the file
path line may be decorated (`train.py`, # train.py, File: train.py, **train.py**), and a path line followed by one
fenced code block without SEARCH markers replaces that whole file. Errors are written to be sent back to the model.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable

SEARCH_RE = re.compile(r"^\s*<{5,9}\s*SEARCH\b.*$")
DIVIDER_RE = re.compile(r"^\s*={5,9}\s*$")
REPLACE_RE = re.compile(r"^\s*>{5,9}\s*REPLACE\b.*$")
FENCE_RE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
DESCRIPTION_RE = re.compile(r"^\W*description\W*:\s*(.*)$", re.IGNORECASE)
PATH_PREFIX_RE = re.compile(r"^(?:file(?:name)?|path)\s*:\s*", re.IGNORECASE)
PATH_RE = re.compile(r"[\w.\-/]*[A-Za-z_][\w.\-/]*(?:\.[A-Za-z0-9]{1,10}|/[\w\-]+)")
MAX_DESCRIPTION = 200


@dataclass
class Edit:
    """One edit: replace `search` by `replace` in `path`; `search` None means `replace` is the whole new file."""

    path: str | None
    search: str | None
    replace: str


@dataclass
class ParsedReply:
    description: str  # "" when the reply has none
    edits: list[Edit] = field(default_factory=list)
    incomplete: list[str | None] = field(default_factory=list)  # paths of blocks or files cut off before their end marker


@dataclass
class EditError:
    """Why an edit was not applied. kind: locked | mismatch | ambiguous | missing | empty_search | no_path | incomplete."""

    path: str | None
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message


# --- parsing -------------------------------------------------------------------------------------------------------


def parse_reply(text: str) -> ParsedReply:
    """Read the description and every edit from a model's reply."""
    lines = text.replace("\r\n", "\n").split("\n")
    edits, prose = _parse_lines(lines, path=None)
    complete = [e for e in edits if not isinstance(e, _Incomplete)]
    cut = [e.path for e in edits if isinstance(e, _Incomplete)]
    return ParsedReply(_description(prose), complete, cut)


def clean_path(line: str) -> str | None:
    """The file path a line names (`train.py`, # train.py, File: `src/m.py`:, **train.py**), or None."""
    s = line.strip().lstrip("#").strip()
    s = PATH_PREFIX_RE.sub("", s).strip()
    s = s.strip("*`'\" ").rstrip(":").strip("*`'\" ")
    s = PATH_PREFIX_RE.sub("", s).strip("`'\" ")
    if s.startswith("./"):
        s = s[2:]
    return s if PATH_RE.fullmatch(s) else None


def _parse_lines(lines: list[str], path: str | None) -> tuple[list[Edit], list[str]]:
    """Edits found in `lines`, and the lines outside any block or fence (where the description lives)."""
    edits: list[Edit] = []
    prose: list[str] = []
    last_nonblank_path: str | None = None  # the path, if the last non-blank line was a path line
    i = 0
    while i < len(lines):
        line = lines[i]
        if SEARCH_RE.match(line):
            edit, i = _read_block(lines, i, path)
            edits.append(edit)
            last_nonblank_path = None
            continue
        fence = FENCE_RE.match(line)
        if fence:
            end = _fence_end(lines, i, fence.group(1))
            inner = lines[i + 1:end]
            info_path = _info_path(fence.group(2))
            if any(SEARCH_RE.match(x) for x in inner):
                inner_edits, _ = _parse_lines(inner, info_path or path)
                edits.extend(inner_edits)
                path = inner_edits[-1].path if inner_edits else path
            elif info_path or last_nonblank_path:
                kind = Edit if end < len(lines) else _Incomplete
                edits.append(kind(info_path or last_nonblank_path, None, "\n".join(inner) + "\n" if inner else ""))
            i, last_nonblank_path = end + 1, None
            continue
        named = clean_path(line)
        if named:
            path = last_nonblank_path = named
        elif line.strip():
            prose.append(line)
            last_nonblank_path = None
        i += 1
    return edits, prose


class _Incomplete(Edit):
    """A block or fenced file that the reply ends inside of (cut off): never applied."""


def _read_block(lines: list[str], start: int, path: str | None) -> tuple[Edit, int]:
    """Read the block opening at `start`; returns it and the index after its REPLACE marker (or the end)."""
    search: list[str] = []
    replace: list[str] = []
    target, i = search, start + 1
    while i < len(lines):
        line = lines[i]
        if target is search and DIVIDER_RE.match(line):
            target = replace
        elif target is replace and REPLACE_RE.match(line):
            return Edit(path, _join(search), _join(replace)), i + 1
        else:
            target.append(line)
        i += 1
    return _Incomplete(path, _join(search), _join(replace)), i


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def _fence_end(lines: list[str], start: int, opener: str) -> int:
    """Index of the line closing the fence opened at `start` (same character, at least as long), or len(lines)."""
    close = re.compile(r"^\s*" + re.escape(opener[0]) + "{" + str(len(opener)) + r",}\s*$")
    for j in range(start + 1, len(lines)):
        if close.match(lines[j]):
            return j
    return len(lines)


def _info_path(info: str) -> str | None:
    """A path given in a fence's info string: ```train.py, ```python train.py, ```python:train.py."""
    words = re.split(r"[\s:]+", info.strip())
    return clean_path(words[-1]) if words and words[-1] else None


def _description(prose: list[str]) -> str:
    """The DESCRIPTION: line's text, else the first line of prose; one line, at most MAX_DESCRIPTION characters."""
    found = ""
    for line in prose:
        match = DESCRIPTION_RE.match(line)
        if match and match.group(1).strip():
            found = match.group(1)
            break
    if not found and prose:
        found = prose[0]
    found = found.strip().strip("*#` ").strip()
    return found if len(found) <= MAX_DESCRIPTION else found[:MAX_DESCRIPTION - 1].rstrip() + "…"


# --- applying ------------------------------------------------------------------------------------------------------


def apply_edits(files: dict[str, str], parsed: ParsedReply | list[Edit], editable: Callable[[str], bool],
                allow_applied: bool = False) -> tuple[dict[str, str], list[EditError]]:
    """Apply the edits in order to a copy of `files`; returns the new files and an error for each edit not applied.

    An edit with no path goes to the only file there is, if there is one. With `allow_applied`, a block whose SEARCH
    text is gone but whose REPLACE text is already there once counts as done (a model resending a fixed block).
    """
    edits = parsed.edits if isinstance(parsed, ParsedReply) else parsed
    out = dict(files)
    errors = []
    for path in parsed.incomplete if isinstance(parsed, ParsedReply) else []:
        path = _default_path(path, files)
        errors.append(_check_path(path, files, editable) or EditError(
            path, "incomplete", f"an edit of {path} was cut off before its end marker and was not applied"))
    for edit in edits:
        path = _default_path(edit.path, files)
        error = _check_path(path, out, editable)
        if error is None:
            text, error = _apply_one(out.get(path), edit, path, allow_applied)
            if error is None:
                out[path] = text
        if error is not None:
            errors.append(error)
    return out, errors


def _default_path(path: str | None, files: dict[str, str]) -> str | None:
    """The edit's path, or the only file there is when it names none."""
    return path or (next(iter(files)) if len(files) == 1 else None)


def _check_path(path: str | None, files: dict[str, str], editable: Callable[[str], bool]) -> EditError | None:
    if path is None:
        return EditError(None, "no_path", "an edit names no file: put the file's path on the line before each block")
    if path.startswith("/") or ".." in path.split("/") or not editable(path):
        allowed = ", ".join(sorted(p for p in files if editable(p))) or "none"
        return EditError(path, "locked", f"{path} is not an editable file; the edit was rejected (editable: {allowed})")
    return None


def _apply_one(text: str | None, edit: Edit, path: str, allow_applied: bool) -> tuple[str | None, EditError | None]:
    """The file's new text after one edit, or an error saying why it could not be applied."""
    if edit.search is None:
        return edit.replace, None
    if text is None:
        if edit.search.strip():
            return None, EditError(path, "missing", f"{path} does not exist, so its SEARCH text cannot match; "
                                                     "to create it, use an empty SEARCH section")
        return edit.replace, None
    if not edit.search.strip():
        return None, EditError(path, "empty_search", f"the SEARCH section for {path} is empty, but {path} exists; "
                                                     "to rewrite the whole file, give its path and then the complete "
                                                     "file in one fenced code block")
    padded = text if text.endswith("\n") else text + "\n"  # a SEARCH may end with the file's unterminated last line
    count = padded.count(edit.search)
    if count == 1:
        new = padded.replace(edit.search, edit.replace, 1)
        return (new if text.endswith("\n") or not new.endswith("\n") else new[:-1]), None
    if count == 0 and allow_applied and edit.replace.strip() and padded.count(edit.replace) == 1:
        return text, None
    if count > 1:
        return None, EditError(path, "ambiguous", f"the SEARCH text matches {count} places in {path}; "
                                                  f"include more surrounding lines so that it matches exactly one:\n"
                                                  f"{_fenced(edit.search)}")
    return None, EditError(path, "mismatch", mismatch_message(path, text, edit.search))


def mismatch_message(path: str, text: str, search: str) -> str:
    """Say that `search` is not in `path`, quoting it and the most similar lines the file really has."""
    start, lines = closest_lines(text, search)
    message = f"the SEARCH text was not found in {path}:\n{_fenced(search)}"
    if lines:
        end = start + len(lines)
        message += (f"\nThe closest lines in {path} (lines {start + 1}-{end}) are:\n{_fenced(''.join(lines))}"
                    "\nCopy the SEARCH lines exactly from the file, whitespace included.")
    return message


def closest_lines(text: str, search: str) -> tuple[int, list[str]]:
    """The window of the file's lines, as many as the SEARCH has, most similar to it (difflib ratio); (index, lines)."""
    file_lines = text.splitlines(keepends=True)
    if file_lines and not file_lines[-1].endswith("\n"):
        file_lines[-1] += "\n"
    size = max(1, len(search.splitlines()))
    if not file_lines:
        return 0, []
    size = min(size, len(file_lines))
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2(search)
    best, best_start = -1.0, 0
    for start in range(len(file_lines) - size + 1):
        matcher.set_seq1("".join(file_lines[start:start + size]))
        if matcher.real_quick_ratio() <= best or matcher.quick_ratio() <= best:
            continue
        ratio = matcher.ratio()
        if ratio > best:
            best, best_start = ratio, start
    return best_start, file_lines[best_start:best_start + size]


def _fenced(text: str) -> str:
    return "```\n" + text + ("" if text.endswith("\n") else "\n") + "```"


def describe_errors(errors: list[EditError], applied: int) -> str:
    """The follow-up message that tells the model which edits failed and what to send instead."""
    parts = [f"{len(errors)} of your edits could not be applied:"]
    for n, error in enumerate(errors, 1):
        parts.append(f"{n}. {error.message}")
    if applied:
        parts.append(f"The other {applied} edit(s) were applied; do not resend them.")
    parts.append("Reply with corrected SEARCH/REPLACE blocks for the failed edits only, each after its file's path, "
                 "with SEARCH lines copied exactly from the current file.")
    return "\n\n".join(parts)
