"""The program.autoresearch.md adopt writes: program.md less the steps the harness now does, plus a harness note."""

from __future__ import annotations

import re

from autoresearch.adopt.protocol import _num
from autoresearch.adopt.reading import PROGRAM, Fit

# A section (a heading and everything under it, down to the next heading of its level or above) whose heading
# starts with the name of something the harness now owns is left out whole: Setup, Logging results, Results,
# Output format, The experiment loop, Git, Never stop, Timeouts, Crashes.
HARNESS_HEADING = re.compile(r"^(the )?(set ?-?up|logging( results)?|log(ging)? (the )?results|results|output( format)?|"
                             r"(experiment|research)s? loop|loop|git|never stop|timeouts?|crash(es)?)\b", re.IGNORECASE)
# A sentence of a kept paragraph or list item, or a code block, that mentions one of these is left out (a list
# item whose first sentence goes is left out whole, with its sub-items).
HARNESS_LINE = re.compile("|".join([
    r"\buv run\b", r"\bpython3? \S*(train|prepare)\.py", r"\bgit\b", r"\bcommit(s|ted)?\b", r"\bbranch(es)?\b",
    r"results\.tsv", r"\btsv\b", r"run\.log", r"\blog file\b", r"\bgrep\b", r"\btail -n\b", r"\bloop forever\b",
    r"\bnever stop\b", r"\bindefinitely\b", r"\bkill it\b", r"\bestablish the baseline\b", r"\bthe first run\b",
    r"\brevert\b", r"\bgit reset\b",
]), re.IGNORECASE)
LIST_ITEM = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
FENCE = re.compile(r"^\s*(```|~~~)")


def split_sentences(text: str) -> list[str]:
    """Sentences of a line of prose: split after . ! or ? (also when closed by ** or `) and a space, not after e.g./i.e."""
    pieces = re.split(r"(?<=[.!?])\s+|(?<=[.!?]\*\*)\s+|(?<=[.!?]`)\s+|(?<=[.!?]\))\s+", text)
    sentences: list[str] = []
    for piece in pieces:
        if sentences and re.search(r"\b(e\.g|i\.e|vs|cf)\.$", sentences[-1]):
            sentences[-1] += " " + piece
        else:
            sentences.append(piece)
    return sentences


def _blocks(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The lines as blocks: ("heading" | "fence" | "item" | "text" | "blank", lines); an item takes its
    continuation lines (indented, not a new item), a paragraph ("text") its following lines."""
    blocks: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line):
            j = i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            blocks.append(("fence", lines[i:j + 1]))
            i = j + 1
        elif HEADING.match(line):
            blocks.append(("heading", [line]))
            i += 1
        elif not line.strip():
            blocks.append(("blank", [line]))
            i += 1
        elif LIST_ITEM.match(line):
            j = i + 1
            while (j < len(lines) and lines[j].strip() and not LIST_ITEM.match(lines[j]) and not HEADING.match(lines[j])
                   and not FENCE.match(lines[j]) and lines[j].startswith((" ", "\t"))):
                j += 1
            blocks.append(("item", lines[i:j]))
            i = j
        else:
            j = i + 1
            while (j < len(lines) and lines[j].strip() and not LIST_ITEM.match(lines[j]) and not HEADING.match(lines[j])
                   and not FENCE.match(lines[j])):
                j += 1
            blocks.append(("text", lines[i:j]))
            i = j
    return blocks


def _filter_prose(text: str) -> str:
    return " ".join(s for s in split_sentences(text) if not HARNESS_LINE.search(s))


def harness_program_body(source: str) -> str:
    """program.md without the sections, sentences, list items and code blocks about what the harness now does."""
    out: list[str] = []
    drop_level = None  # inside a left-out section of this heading level
    dropped_item_indent = None  # sub-items of a left-out list item go with it
    for kind, lines in _blocks(source.splitlines()):
        if kind == "heading":
            level, title = len(HEADING.match(lines[0]).group(1)), HEADING.match(lines[0]).group(2)
            if drop_level is not None and level > drop_level:
                continue
            drop_level = level if level > 1 and HARNESS_HEADING.search(title) else None
            dropped_item_indent = None
            if drop_level is None:
                out.append(lines[0])
            continue
        if drop_level is not None:
            continue
        if kind == "blank":
            out.append("")
            continue
        if kind == "fence":
            if not HARNESS_LINE.search("\n".join(lines)):
                out.extend(lines)
            continue
        if kind == "item":
            marker = LIST_ITEM.match(lines[0])
            indent = len(marker.group(1))
            if dropped_item_indent is not None and indent > dropped_item_indent:
                continue
            dropped_item_indent = None
            body = " ".join([lines[0][marker.end():].strip()] + [line.strip() for line in lines[1:]])
            first = split_sentences(body)[0]
            kept = _filter_prose(body)
            if HARNESS_LINE.search(first) or not kept:
                dropped_item_indent = indent
                continue
            out.extend(lines if kept == body else [lines[0][:marker.end()] + kept])
            continue
        dropped_item_indent = None
        body = " ".join(line.strip() for line in lines)
        kept = _filter_prose(body)
        if kept:
            out.extend(lines if kept == body else [lines[0][:len(lines[0]) - len(lines[0].lstrip())] + kept])
    return _tidy(out)


def _tidy(lines: list[str]) -> str:
    """Drop the headings (but the title) left with nothing under them before the next heading of their level or
    above, innermost first, then runs of blank lines."""
    changed = True
    while changed:
        changed = False
        for i, line in enumerate(lines):
            match = HEADING.match(line)
            if not match or len(match.group(1)) == 1:
                continue
            following = next((other for other in lines[i + 1:] if other.strip()), None)
            after = HEADING.match(following) if following is not None else None
            if following is None or (after and len(after.group(1)) <= len(match.group(1))):
                del lines[i]
                changed = True
                break
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def harness_note(fit: Fit, source_name: str | None) -> str:
    better = "lower" if fit.direction == "minimize" else "higher"
    origin = (f"This file was made by `autoresearch adopt` from {source_name}: its goals and ideas are kept, and its "
              "steps for the experiment loop (branches, git, running and timing train.py, reading logs, results.tsv, "
              "never stopping) are left out, because the autoresearch harness does all of that itself:") if source_name \
        else "This file was made by `autoresearch adopt` (the repository had no program.md). The autoresearch harness runs the experiments:"
    return "\n".join([
        "## How experiments run here",
        "",
        origin,
        "",
        "- You only propose changes to `train.py`; every other file is read-only to you.",
        f"- The harness commits each proposal as a candidate, runs it for the fixed budget ({_num(fit.seconds)} s of "
        f"training: TIME_BUDGET in prepare.py, whatever the text below says) and reads `{fit.metric}` from the "
        "summary block train.py prints after `---`, so keep that block.",
        f"- It keeps a change only when `{fit.metric}` is {better} by more than the noise between runs, and otherwise "
        "reverts it; then it shows you every result so far, and the end of the log when a run crashed.",
        "- It never stops to ask; it runs until the user stops it.",
        "",
    ])


def harness_program(source: str | None, fit: Fit) -> str:
    """The program file adopt writes: the title and introduction, the harness note, then the rest of program.md as kept."""
    if source is None:
        goal = "lower" if fit.direction == "minimize" else "higher"
        return f"# autoresearch\n\nThe goal: get {goal} `{fit.metric}` by changing `train.py`.\n\n" + harness_note(fit, None)
    body = harness_program_body(source)
    lines = body.splitlines()
    first = next((i for i, line in enumerate(lines) if HEADING.match(line) and len(HEADING.match(line).group(1)) > 1),
                 len(lines))
    head, rest = "\n".join(lines[:first]).strip(), "\n".join(lines[first:]).strip()
    parts = [p for p in (head, harness_note(fit, PROGRAM).strip(), rest) if p]
    return "\n\n".join(parts) + "\n"
