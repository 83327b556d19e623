"""Rendering the autoresearch.toml adopt writes, and the lines it adds to .gitignore."""

from __future__ import annotations

import posixpath

from autoresearch.adopt.reading import HF_HUB_CACHE, TUNE_FIXED, Fit, glob_literal

GITIGNORE = ".gitignore"
IGNORED = (".autoresearch/", "results.tsv")  # the harness's state, and the results table it writes


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(_toml_str(i) for i in items) + "]"


def _toml_str(text: str) -> str:
    """A TOML string: a literal one ('...') when it holds a double quote or backslash and no single quote."""
    if ('"' in text or "\\" in text) and "'" not in text and "\n" not in text:
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _num(value: float) -> str:
    return f"{value:g}" if value != int(value) else str(int(value))


def _comment(text: str, width: int = 116) -> list[str]:
    """`text` as `# ` comment lines of at most `width` characters."""
    lines, line = [], "#"
    for word in text.split():
        if len(line) + 1 + len(word) > width and line != "#":
            lines.append(line)
            line = "#"
        line += " " + word
    return lines + [line]


def render_toml(fit: Fit) -> str:
    """The autoresearch.toml adopt writes for `fit`, with the comments that say why each value is what it is."""
    s, allowance = fit.seconds, fit.allowance
    better = "lower" if fit.direction == "minimize" else "higher"
    protect = [glob_literal(posixpath.join(fit.data_dir, fit.val_file)), glob_literal(fit.tokenizer_dir)]
    out = [
        "# autoresearch.toml: the research protocol of this workspace, written by `autoresearch adopt` for a repository",
        "# laid out like Karpathy's autoresearch. The harness enforces it and reads it as committed; the agent cannot edit it.",
        "",
        f"program = {_toml_str(fit.program)}  # what the agent reads"
        + (" (yours, left as it was)" if fit.program_is_users else ": program.md without the loop, git and logging steps"),
        f"editable = {_toml_list(['train.py'])}  # the only file the agent may change",
        f"locked = {_toml_list(fit.locked)}  # must hash the same before and after every run",
        "",
        "[commands]",
        *_comment((fit.why if fit.why.startswith("uv ") else fit.why[0].upper() + fit.why[1:]) + "."),
        f"setup = {_toml_str(fit.setup)}  # `autoresearch prepare`: prepare.py downloads the data and trains the tokenizer",
        f"run = {_toml_str(fit.run)}  # one experiment: trains for TIME_BUDGET seconds, then scores itself",
        *_comment("No `evaluate`: this repository has no locked evaluator, so the metric is self-reported. train.py, "
                  "the file the agent edits, computes and prints the number that decides, so an agent could forge or "
                  "game it (print a better number, evaluate on fewer tokens, skip the evaluation). The harness still "
                  "enforces: the time limit, which it measures itself; prepare.py and this file unchanged, hashed "
                  "before and after every run; the validation shard and the tokenizer unchanged, by content; and a "
                  "keep only for a gain beyond the noise between runs. For a metric the agent cannot forge, move the "
                  "scoring into a locked evaluate.py (as `autoresearch init --template gpt` does)."),
        "",
        "[metric]",
        f"name = {_toml_str(fit.metric)}  # the first key of the summary block train.py prints after `---`",
        f"direction = {_toml_str(fit.direction)}  # {better} is better"
        + ("" if fit.direction_known else " (a guess from the name: check it)"),
        "",
        "[budget]",
        *_comment(f"train.py reads TIME_BUDGET from prepare.py ({_num(s)} s) and ignores AUTORESEARCH_TIME_BUDGET, so "
                  "`seconds` must equal it: change TIME_BUDGET in prepare.py (a locked file, so a new protocol: use a "
                  "new --tag) and this line together, never with --budget."),
        f"seconds = {_num(s)}",
        *_comment("A run longer than seconds + this is invalid. train.py does not count its first 11 steps (warm-up "
                  "and compilation) and scores itself after training (EVAL_TOKENS tokens of the validation shard), so "
                  "a run takes well over its budget: max(120, 0.5 × TIME_BUDGET) covers the imports, the warm-up and "
                  "the evaluation with room to spare (the CPU fork's README: a run of its 30 min budget takes about 40 min). "
                  "It is also the most a run could train past its budget unseen."),
        f"startup_allowance_seconds = {_num(allowance)}",
        "timeout_factor = 2.0",
        f"grace_seconds = {_num(allowance)}  # killed at seconds × 2 + grace = {_num(2 * s + allowance)} s, a whole "
        f"budget after a run turns invalid ({_num(s + allowance)} s)",
    ]
    if fit.seed_ignored:
        out += ["", "[decide]",
                *_comment("train.py seeds itself with a fixed seed and ignores AUTORESEARCH_SEED, so the runs of "
                          "one commit differ only by timing (how many steps fit the budget): σ, the noise a gain must "
                          "beat, is that spread."),
                'seeds = "auto"  # runs of a candidate that passes its screen: 3 on CUDA, 2 elsewhere (a baseline: one more)',
                "threshold_sigmas = 2.0  # keep only a gain beyond this many σ"]
    out += ["", "[sandbox]",
            'mode = "auto"  # bubblewrap where it works: training sees only an allow-list of the machine',
            *_comment(f"The data and tokenizer prepare.py writes{'' if fit.cache_known else ' (CACHE_DIR was not a plain path, so the default)'}: "
                      "training must read them. Nothing can be hidden from it: train.py reads the validation shard to "
                      "score itself."),
            f"readable = {_toml_list(fit.readable)}"]
    if fit.uv_env:
        out += _comment("Also the uv environment, uv's own interpreters and uv itself (read-only), and uv's cache "
                        "(writable: uv keeps its locks and bookkeeping there). If you set UV_CACHE_DIR, name that folder "
                        "in `writable` and UV_CACHE_DIR in `env`.")
    if fit.uses_kernels:
        out += _comment("train.py downloads its flash-attention kernel from the Hugging Face Hub at run time (`kernels`), "
                        f"so runs get the network and the Hub's cache (only {HF_HUB_CACHE}, never HF's token file); "
                        "create that folder once, or each run downloads the kernel again.")
    if fit.writable:
        out.append(f"writable = {_toml_list(fit.writable)}")
    if fit.uses_kernels:
        out.append("network = true")
    out += [*_comment("The validation shard and the tokenizer decide the metric: a run that changes them is invalid, "
                      "and the session stops."),
            f"protect = {_toml_list(protect)}",
            "", "[agent]", 'name = "tune"  # who proposes: the built-in, offline tune (Optuna over train.py\'s constants); --agent for others']
    if fit.tune_fixed:
        out += ["# The tune agent leaves these constants of train.py alone:"]
        for name in fit.tune_fixed:
            out += [f"[agent.tune.{name}]", f"fixed = true  # {TUNE_FIXED[name]}"]
    return "\n".join(out) + "\n"


def gitignore_addition(existing: str) -> str:
    """What to append to .gitignore: the IGNORED entries it lacks (as `x`, `x/`, `/x` or `/x/`), after a comment."""
    have = {line.strip().strip("/") for line in existing.splitlines()}
    missing = [entry for entry in IGNORED if entry.strip("/") not in have]
    if not missing:
        return ""
    lead = "\n" if existing and not existing.endswith("\n") else ""
    lead += "\n" if existing.strip() else ""
    return lead + "# autoresearch: the harness's state and run logs, and its results table\n" + "".join(f"{m}\n" for m in missing)
