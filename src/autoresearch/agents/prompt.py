"""Build the agent's prompt: the harness's protocol, then program.md, then the context, within a size cap."""

from __future__ import annotations

from autoresearch.agents.base import Context

BLOCK_FORMAT = """\
Reply with exactly one line `DESCRIPTION: <what this experiment tries, in one line>`, then your edits as
SEARCH/REPLACE blocks. Each block names the file on its own line, then:

train.py
<<<<<<< SEARCH
lines copied exactly from the current file
=======
the lines that replace them
>>>>>>> REPLACE

Several blocks may follow one another. The SEARCH text must match the file exactly, once; keep it short but
unique. To rewrite a whole file instead, give its path on one line and then the complete new file in one
fenced code block."""

DIRECT_FORMAT = """\
Edit the files directly in the current directory; the harness reads the changes with git afterwards. End
your final message with one line `DESCRIPTION: <what this experiment tries, in one line>`."""


PROGRAM_HEADING = """\
# The research program (program.md: the human's goals and ideas)

Where it asks you to run the loop, training, git or logging yourself, or never to stop, the harness above does
that now: propose the one experiment.

"""


def protocol_section(context: Context, reply_format: str) -> str:
    editable = ", ".join(context.editable or sorted(context.files))
    locked = ", ".join(sorted(context.locked)) or "none"
    direction = "higher" if context.maximize else "lower"
    rules = f"""\
# Protocol (enforced by the harness, not by you)

You propose ONE experiment at a time. The harness commits it, runs it under a fixed wall-clock budget, reads
`{context.metric}` ({direction} is better) from the run's summary block, keeps the change if it beats the
best beyond noise and reverts it otherwise, and records everything. You do not run git or training yourself.

- Only these files may change: {editable}. A change to any other file ({locked}) is rejected unrun.
- A candidate identical to one already measured is skipped. Do not just change the random seed.
- If the run crashes you may be shown its log and asked to fix it (at most twice).

{BLOCK_FORMAT if reply_format == "blocks" else DIRECT_FORMAT}"""
    return rules


def _history_lines(context: Context) -> list[str]:
    return [f"{h.get('commit', '-')}\t{h['metric'] if h.get('metric') is not None else '-'}\t{h.get('status')}\t{h.get('description')}"
            for h in context.history]


def build_prompt(context: Context, reply_format: str = "blocks", max_chars: int = 200_000) -> str:
    """The prompt text; history, then kept diffs, then locked files' text are cut (oldest first) to fit max_chars."""
    history = _history_lines(context)
    kept = list(context.kept_diffs)
    show_locked = True
    dropped = {"history": 0, "kept": 0}
    while True:
        text = _render(context, reply_format, history, kept, show_locked, dropped)
        if len(text) <= max_chars:
            return text
        if len(history) > 5:
            cut = max(1, len(history) // 4)
            history, dropped["history"] = history[cut:], dropped["history"] + cut
        elif kept:
            kept, dropped["kept"] = kept[1:], dropped["kept"] + 1
        elif show_locked:
            show_locked = False
        else:
            return text  # the editable files alone are larger than the cap: send them whole anyway


def _render(context, reply_format, history, kept, show_locked, dropped) -> str:
    best = "none yet" if context.best is None else f"{context.best:.6f}"
    noise = "" if context.noise_floor is None else f" (noise between seeds: σ ≈ {context.noise_floor:.6f})"
    parts = [protocol_section(context, reply_format), PROGRAM_HEADING + context.program.strip(),
             "# Where things stand",
             f"Metric: {context.metric}, {'higher' if context.maximize else 'lower'} is better. Best so far: {best}{noise}. Device: {context.device}."]
    if history:
        note = f" ({dropped['history']} older rows left out to fit)" if dropped["history"] else ""
        parts.append(f"## Every experiment so far{note}\ncommit\t{context.metric}\tstatus\tdescription\n" + "\n".join(history))
    if kept:
        note = f" ({dropped['kept']} older ones left out to fit)" if dropped["kept"] else ""
        parts.append(f"## Changes kept so far{note}\n" + "\n\n".join(f"### {k['description']} → {k.get('metric')}\n```diff\n{k['diff'].strip()}\n```" for k in kept))
    if context.recent_failures:
        parts.append("## Recent ideas that did not win\n" + "\n".join(
            f"- {f['description']}: {f['status']}" + (f" ({f['reason']})" if f.get("reason") else "") for f in context.recent_failures))
    if context.lineage and (not context.parent_is_best or len(context.lineage) > 1):
        node = context.lineage[-1]
        which = "the best so far" if context.parent_is_best else "not the best: the search chose it to explore from"
        parts.append(f"# The node you are editing: #{node['id']} ({which})\nIts lineage, root first "
                     f"(id, commit, {context.metric}, status, description):\n" + "\n".join(
                         f"#{n['id']}\t{n['commit']}\t{n['metric'] if n.get('metric') is not None else '-'}\t{n.get('status')}\t"
                         f"{n.get('description')}" for n in context.lineage))
    if context.fix is not None:
        parts.append(f"# Your last idea crashed (fix attempt {context.fix.attempt} of 2)\nIdea: {context.fix.description}\n"
                     f"Last lines of its log:\n```\n{context.fix.log_tail.rstrip()}\n```\n"
                     "Fix the idea (the files below are the crashed version), or reply with no edits to give it up.")
    if show_locked and context.locked:
        parts.append("# Locked files (read-only, for reference)\n" + "\n\n".join(f"## {name}\n```\n{text}\n```" for name, text in sorted(context.locked.items())))
    elif context.locked:
        parts.append("# Locked files\n(left out to fit: " + ", ".join(sorted(context.locked)) + ")")
    files = context.fix.files if context.fix is not None else context.files
    parts.append("# Editable files (current version)\n" + "\n\n".join(f"## {name}\n```\n{text}\n```" for name, text in sorted(files.items())))
    return "\n\n".join(parts) + "\n"
