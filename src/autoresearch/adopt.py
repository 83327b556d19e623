"""`autoresearch adopt`: turn a repository laid out like Karpathy's autoresearch into a workspace, with no hand edits."""

from __future__ import annotations

import ast
import importlib.util
import os
import posixpath
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import CONFIG_FILE, load_config, parse_config
from autoresearch.sandbox import SYSTEM_DIRS
from autoresearch.workspace import _identity_args, git

PROGRAM = "program.md"
PROGRAM_OUT = "program.autoresearch.md"
GITIGNORE = ".gitignore"
IGNORED = (".autoresearch/", "results.tsv")  # the harness's state, and the results table it writes
DEFAULT_CACHE = "~/.cache/autoresearch"  # where Karpathy's prepare.py keeps data/ and tokenizer/
DEFAULT_VAL_FILE = "shard_06542.parquet"  # his pinned validation shard
UV_CACHE = "~/.cache/uv"
UV_PYTHONS = "~/.local/share/uv/python"  # uv-managed interpreters, which a uv environment's python links to
UV_ENVS = "~/.cache/autoresearch-envs"  # the project environments the uv commands use (outside any worktree)
HF_HUB_CACHE = "~/.cache/huggingface/hub"  # where the `kernels` package keeps what it downloads
# Constants of Karpathy's train.py that the tune agent should leave alone, and why.
TUNE_FIXED = {
    "DEVICE_BATCH_SIZE": "must divide TOTAL_BATCH_SIZE (another value crashes the run) and only trades memory for speed",
    "H100_BF16_PEAK_FLOPS": "only scales the MFU it prints",
}

MINIMIZE_WORDS = {"bpb", "bpc", "bits", "loss", "nll", "perplexity", "ppl", "error", "err", "wer", "cer", "mse",
                  "mae", "rmse", "regret", "latency", "distance"}
MAXIMIZE_WORDS = {"acc", "accuracy", "score", "f1", "auc", "auroc", "bleu", "rouge", "reward", "return", "precision",
                  "recall", "iou", "map", "top1", "top5", "win", "winrate", "pass", "exact", "em"}


@dataclass
class Fit:
    """What adopt read from the repository, and the protocol it derives from it."""

    metric: str
    direction: str
    direction_known: bool
    seconds: float
    cache: str
    data_dir: str
    tokenizer_dir: str
    val_file: str
    cache_known: bool
    uv_env: str  # the uv project environment (a path under ~), or "" when the commands run on this Python
    why: str  # why the commands run the way they do
    uses_kernels: bool  # train.py imports the `kernels` package (a download from the Hub at run time)
    seed_ignored: bool
    program: str  # the program file the agent reads
    program_is_users: bool = False  # it was there already (adopt leaves it as it is)
    locked: list[str] = field(default_factory=list)
    tune_fixed: list[str] = field(default_factory=list)
    readable: list[str] = field(default_factory=list)
    writable: list[str] = field(default_factory=list)
    missing_modules: list[str] = field(default_factory=list)

    @property
    def allowance(self) -> float:
        """Start-up allowance: max(120, 0.5 × TIME_BUDGET) (see the comment adopt writes)."""
        return float(max(120.0, 0.5 * self.seconds))

    def command(self, script: str, setup: bool = False) -> str:
        """How a script runs: through uv in its environment (set up with --frozen, run with --no-sync), or on this Python."""
        if not self.uv_env:
            return f"{shlex.quote(sys.executable)} {script}"
        env = 'UV_PROJECT_ENVIRONMENT="$HOME/' + self.uv_env[2:] + '"'
        return f"{env} uv run {'--frozen' if setup else '--no-sync'} {script}"

    @property
    def setup(self) -> str:
        return self.command("prepare.py", setup=True)

    @property
    def run(self) -> str:
        return self.command("train.py")


# ---------------------------------------------------------------------------
# Reading the repository's Python without running it
# ---------------------------------------------------------------------------

class _Unknown(Exception):
    """An expression adopt does not evaluate statically."""


def static_value(node: ast.expr, names: dict):
    """The value of a simple constant expression: numbers, strings, f-strings, arithmetic, names already known,
    os.path.join, os.path.expanduser (the `~` kept as it is), Path.home() (as `~`), Path(...) / ...; else _Unknown."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = static_value(node.operand, names)
        if isinstance(value, (int, float)):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        left, right = static_value(node.left, names), static_value(node.right, names)
        if isinstance(left, str) and isinstance(right, str) and isinstance(node.op, (ast.Add, ast.Div)):
            return left + right if isinstance(node.op, ast.Add) else posixpath.join(left, right)
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.Div: lambda a, b: a / b, ast.FloorDiv: lambda a, b: a // b, ast.Pow: lambda a, b: a ** b}
        if isinstance(left, (int, float)) and isinstance(right, (int, float)) and type(node.op) in ops:
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise _Unknown
            return ops[type(node.op)](left, right)
    if isinstance(node, ast.JoinedStr):
        return "".join(_formatted(part, names) for part in node.values)
    if isinstance(node, ast.Call) and not node.keywords:
        name = ast.unparse(node.func)
        args = [static_value(a, names) for a in node.args]
        if name in ("os.path.join", "posixpath.join") and args and all(isinstance(a, str) for a in args):
            return posixpath.join(*args)
        if name in ("os.path.expanduser", "str", "Path", "pathlib.Path") and len(args) == 1 and isinstance(args[0], str):
            return args[0]
        if name in ("Path.home", "pathlib.Path.home") and not args:
            return "~"
        if isinstance(node.func, ast.Attribute) and node.func.attr == "expanduser" and not args:
            return static_value(node.func.value, names)
    raise _Unknown


def _formatted(part: ast.expr, names: dict) -> str:
    if isinstance(part, ast.Constant):
        return str(part.value)
    if isinstance(part, ast.FormattedValue) and part.conversion == -1:
        spec = static_value(part.format_spec, names) if part.format_spec is not None else ""
        return format(static_value(part.value, names), spec)
    raise _Unknown


def module_constants(source: str) -> dict:
    """The module-level `NAME = <simple expression>` assignments of a file, evaluated in order (see static_value)."""
    names: dict = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = static_value(node.value, names)
            except (_Unknown, TypeError, ValueError, ZeroDivisionError, OverflowError):
                names.pop(node.targets[0].id, None)
    return names


def _print_text(call: ast.Call) -> tuple[str, bool] | None:
    """The leading literal text of a print call's first argument, and whether that argument is all literal."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value, True
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        return str(arg.values[0].value), False
    return None


def summary_metric(source: str) -> str | None:
    """The first key train.py prints after its `print("---")`: the `print(f"<key>: ...")` of the summary block."""
    tree = ast.parse(source)
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id == "print"), key=lambda n: (n.lineno, n.col_offset))
    marker = False
    for call in calls:
        found = _print_text(call)
        if found is None:
            continue
        text, literal = found
        if literal and text.strip() == "---":
            marker = True
            continue
        key = re.match(r"\s*([A-Za-z_][\w.\-]*)\s*:", text)
        if marker and key:
            return key.group(1)
    return None


def metric_direction(name: str) -> tuple[str, bool]:
    """minimize for bpb/loss/perplexity/error-like names, maximize for accuracy/score-like ones; (direction, known)."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if any(w in MINIMIZE_WORDS or w.endswith(("loss", "bpb", "error")) for w in words):
        return "minimize", True
    if any(w in MAXIMIZE_WORDS or w.endswith(("acc", "accuracy", "score")) for w in words):
        return "maximize", True
    return "minimize", False


def imported_modules(source: str) -> set[str]:
    """The top-level names of the modules a file imports (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def missing_modules(root: Path, sources: list[str]) -> list[str]:
    """Third-party modules the files import that the Python running autoresearch cannot find."""
    local = {p.stem for p in root.glob("*.py")} | {p.name for p in root.iterdir() if p.is_dir()}
    names = set().union(*(imported_modules(s) for s in sources)) - set(sys.stdlib_module_names) - local - {"__future__"}
    return sorted(n for n in names if not _importable(n))


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------
# Fitting the protocol
# ---------------------------------------------------------------------------

def home_relative(path: str) -> str:
    """An absolute path under the home folder written with `~` (portable in a committed file), else as it is."""
    try:
        return "~/" + Path(path).resolve().relative_to(Path.home().resolve()).as_posix()
    except ValueError:
        return path


def glob_literal(path: str) -> str:
    """A path as a glob that matches only itself (the sandbox expands globs, `~` and $VARS)."""
    return ("~" + re.sub(r"([*?\[])", r"[\1]", path[1:])) if path.startswith("~") else re.sub(r"([*?\[])", r"[\1]", path)


def check_repository(root: Path) -> None:
    """Refuse what adopt must not touch: not a git repository's top level, no train.py/prepare.py, a config already there."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    if shutil.which("git") is None:
        raise UsageError("git is not installed or not on PATH; install git and try again")
    top = git(root, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0:
        raise UsageError(f"{root} is not a git repository; `git init` it and commit train.py and prepare.py first")
    if Path(top.stdout.strip()).resolve() != root.resolve():
        raise UsageError(f"{root} is inside the git repository {top.stdout.strip()}, not its top level; "
                         "adopt the repository's top folder")
    missing = [name for name in ("train.py", "prepare.py") if not (root / name).is_file()]
    if missing:
        raise UsageError(f"{root} has no {' and no '.join(missing)}; adopt is for a repository laid out like "
                         "Karpathy's autoresearch (prepare.py, train.py, program.md)")
    if (root / CONFIG_FILE).exists():
        raise UsageError(f"{root / CONFIG_FILE} already exists; adopt never overwrites it (this is a workspace already: "
                         "`autoresearch run`)")


def read_budget(prepare: dict, root: Path) -> float:
    seconds = prepare.get("TIME_BUDGET")
    if not isinstance(seconds, (int, float)) or seconds <= 0:
        raise UsageError(f"{root / 'prepare.py'} has no module-level `TIME_BUDGET = <seconds>`, which train.py trains "
                         "for; write autoresearch.toml by hand (see `autoresearch init --template gpt` for one)")
    return float(seconds)


def _plain_path(value) -> str | None:
    """A path prepare.py spells out (under `~`, or absolute: then written with `~` when under the home), else None."""
    if not isinstance(value, str) or not value.startswith(("~", "/")):
        return None
    return home_relative(value) if value.startswith("/") else value.rstrip("/")


def read_cache(prepare: dict) -> tuple[str, str, str, str, bool]:
    """Where prepare.py keeps its data: (cache, data dir, tokenizer dir, validation file name, CACHE_DIR read)."""
    cache = _plain_path(prepare.get("CACHE_DIR"))
    known = cache is not None
    cache = cache or DEFAULT_CACHE
    data = (_plain_path(prepare.get("DATA_DIR")) if known else None) or posixpath.join(cache, "data")
    tokenizer = (_plain_path(prepare.get("TOKENIZER_DIR")) if known else None) or posixpath.join(cache, "tokenizer")
    val = prepare.get("VAL_FILENAME")
    val = val if isinstance(val, str) and val and "/" not in val else DEFAULT_VAL_FILE
    return cache, data, tokenizer, val, known


def choose_runner(root: Path, uv_path: str | None) -> tuple[str, str]:
    """(uv environment or "", why): uv when it is on PATH and the repository has uv.lock, else this Python."""
    lock = (root / "uv.lock").is_file()
    if uv_path and lock:
        env = f"{UV_ENVS}/{re.sub(r'[^A-Za-z0-9._-]+', '-', root.resolve().name).strip('.') or 'project'}"
        return env, (
            f"uv is on PATH ({uv_path}) and the repository has uv.lock, so its commands run through uv, in the "
            f"environment uv.lock pins. It lives in {env}, outside the repository: each candidate runs in a fresh "
            "git worktree, where a .venv would be rebuilt for every run and would count as Python code written into "
            "the workspace. `autoresearch prepare` creates it (--frozen: uv.lock is never rewritten); runs use it as "
            "it is (--no-sync: no network, no change to it)")
    reason = "uv is not on PATH" if lock else "the repository has no uv.lock"
    return "", (f"{reason}, so its commands run on the Python autoresearch runs on ({sys.executable}), which must "
                "have the packages prepare.py and train.py import")


def fit_repository(root: Path, uv_path: str | None) -> Fit:
    """Everything adopt derives from prepare.py, train.py, program.md and uv.lock (no file is written)."""
    train_src, prepare_src = (_source(root / name) for name in ("train.py", "prepare.py"))
    prepare, metric = module_constants(prepare_src), summary_metric(train_src)
    if metric is None:
        raise UsageError(f"{root / 'train.py'} prints no summary block (`print(\"---\")` then `print(f\"<metric>: ...\")`), "
                         "which the harness reads the metric from")
    direction, known = metric_direction(metric)
    seconds = read_budget(prepare, root)
    cache, data, tokenizer, val, cache_known = read_cache(prepare)
    uv_env, why = choose_runner(root, uv_path)
    program = PROGRAM_OUT
    locked = ["prepare.py"] + ([PROGRAM] if (root / PROGRAM).is_file() else []) + [PROGRAM_OUT, CONFIG_FILE]
    if uv_env:
        locked[1:1] = [n for n in ("pyproject.toml", "uv.lock", ".python-version") if (root / n).is_file()]
    from autoresearch.agents.tune import find_constants

    found = {c.name for c in find_constants(train_src)}
    fit = Fit(metric, direction, known, seconds, cache, data, tokenizer, val, cache_known, uv_env, why,
              "kernels" in imported_modules(train_src), "AUTORESEARCH_SEED" not in train_src, program, locked=locked,
              tune_fixed=[n for n in TUNE_FIXED if n in found])
    fit.readable = [glob_literal(p) for p in (cache, data, tokenizer)
                    if p == cache or not (p + "/").startswith(cache + "/")]  # the data dirs, unless under the cache
    if uv_env:
        fit.readable += [uv_env, UV_PYTHONS]
        fit.readable += [d for d in uv_dirs(uv_path) if d not in fit.readable]
        fit.writable.append(UV_CACHE)
    else:
        fit.missing_modules = missing_modules(root, [train_src, prepare_src])
    if fit.uses_kernels:
        fit.writable.append(HF_HUB_CACHE)
    return fit


def _source(path: Path) -> str:
    """A Python file's text, checked to parse (a one-line error if it does not)."""
    text = path.read_text(encoding="utf-8")
    try:
        ast.parse(text, filename=str(path))
    except SyntaxError as exc:
        raise UsageError(f"{path} does not parse: {exc.msg} (line {exc.lineno})") from None
    return text


def uv_dirs(uv_path: str) -> list[str]:
    """The folders holding the uv executable (and what its link points to) outside the system folders training sees."""
    dirs = []
    for path in (Path(uv_path).parent, Path(uv_path).resolve().parent):
        if not any(str(path) == top or str(path).startswith(top + "/") for top in SYSTEM_DIRS):
            dirs.append(home_relative(str(path)))
    return list(dict.fromkeys(dirs))


# ---------------------------------------------------------------------------
# The files adopt writes
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# The program file: program.md without what the harness now does
# ---------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------
# adopt
# ---------------------------------------------------------------------------

def _write_new(path: Path, text: str) -> None:
    """Create `path` with `text`; an existing file is never overwritten (the open fails)."""
    with open(path, "x", encoding="utf-8") as f:
        f.write(text)


def _committed_at_head(root: Path, names: list[str]) -> list[str]:
    """Those of `names` that HEAD does not hold (all of them when there is no commit yet)."""
    if git(root, "rev-parse", "--verify", "--quiet", "HEAD", check=False).returncode != 0:
        return list(names)
    held = set(git(root, "ls-tree", "-r", "--name-only", "HEAD", "--", *names).stdout.splitlines())
    return [n for n in names if n not in held]


def _gitignore_is_users(root: Path) -> bool:
    """Whether .gitignore holds changes of the user's that a commit of it would take along (or is theirs, untracked)."""
    path = root / GITIGNORE
    if not path.exists():
        return False
    if git(root, "ls-files", "--error-unmatch", "--", GITIGNORE, check=False).returncode != 0:
        return True
    return git(root, "diff", "--quiet", "HEAD", "--", GITIGNORE, check=False).returncode != 0


def commit_plan(root: Path, fit: Fit, program_existed: bool) -> tuple[bool, bool, str, list[str]]:
    """(commit?, with .gitignore?, why not, the user's files to commit first): commit only when the user has nothing
    staged and the files the config names are committed, so that the commit holds exactly adopt's files and
    validates at HEAD."""
    if git(root, "diff", "--cached", "--quiet", check=False).returncode != 0:
        return False, False, "you have staged changes, and adopt never mixes your work into its commit", []
    needed = ["train.py"] + [n for n in fit.locked if n not in (PROGRAM_OUT, CONFIG_FILE)]
    if program_existed:  # the user's own program.autoresearch.md: the commit must not need it uncommitted
        needed.append(PROGRAM_OUT)
    absent = _committed_at_head(root, needed)
    if absent:
        return False, False, f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not committed yet", absent
    return True, not _gitignore_is_users(root), "", []


def adopt(directory: Path, echo=print, uv_path: str | None | bool = True) -> list[str]:
    """Make `directory` a workspace: write autoresearch.toml, program.autoresearch.md and .gitignore entries, and
    commit them. `uv_path`: True to look uv up on PATH, else the path (None: no uv). Returns the paths written."""
    root = Path(directory).resolve()
    check_repository(root)
    uv = shutil.which("uv") if uv_path is True else uv_path or None
    fit = fit_repository(root, uv)
    program_existed = fit.program_is_users = (root / PROGRAM_OUT).exists()
    source = (root / PROGRAM).read_text(encoding="utf-8") if (root / PROGRAM).is_file() else None
    program_text = None if program_existed else harness_program(source, fit)
    toml_text = render_toml(fit)
    known = {PROGRAM_OUT, CONFIG_FILE}
    parse_config(toml_text, CONFIG_FILE, lambda name: name in known or (root / name).is_file(),
                 lambda pattern: any(root.glob(pattern)))  # checked before anything is written
    gitignore_path = root / GITIGNORE
    existing = gitignore_path.read_text(encoding="utf-8") if gitignore_path.is_file() else ""
    addition = gitignore_addition(existing)
    plan = commit_plan(root, fit, program_existed)

    written = []
    if program_text is not None:
        _write_new(root / PROGRAM_OUT, program_text)
        written.append(PROGRAM_OUT)
    _write_new(root / CONFIG_FILE, toml_text)
    written.append(CONFIG_FILE)
    if addition:
        with open(gitignore_path, "a", encoding="utf-8") as f:
            f.write(addition)
        written.append(GITIGNORE)
    load_config(root)  # what the harness will read
    committed = commit(root, written, plan)
    report(root, fit, written, program_existed, source is not None, committed, echo)
    return written


def commit(root: Path, written: list[str], plan: tuple[bool, bool, str, list[str]]) -> str:
    """One commit of exactly adopt's files (git commit --only), when commit_plan allows it; what to tell the user."""
    ok, with_gitignore, why, theirs = plan
    if not ok:
        return (f"Not committed: {why}. The harness reads autoresearch.toml as committed, so commit these files "
                f"yourself: git add {' '.join(theirs + written)} && git commit -m 'autoresearch: adopt'")
    paths = [p for p in written if p != GITIGNORE or with_gitignore]
    new = [p for p in paths if git(root, "ls-files", "--error-unmatch", "--", p, check=False).returncode != 0]
    if new:
        git(root, "add", "--", *new)
    git(root, *_identity_args(root), "commit", "-q", "--only", "-m",
        f"autoresearch: adopt this repository ({', '.join(paths)})", "--", *paths)
    note = f"Committed {', '.join(paths)} (one commit; nothing else of yours is in it)."
    if GITIGNORE in written and not with_gitignore:
        note += f" {GITIGNORE} had changes of yours, so it stayed out of the commit: commit it when you are ready."
    return note


def report(root: Path, fit: Fit, written: list[str], program_existed: bool, had_program: bool, committed: str,
           echo) -> None:
    """The summary adopt prints: what it wrote and why, what the metric allows, and the next steps."""
    echo(f"Adopted {root} as an autoresearch workspace.")
    echo(f"  {CONFIG_FILE}: metric {fit.metric} ({fit.direction}{'' if fit.direction_known else ', a guess: check it'}), "
         f"budget {_num(fit.seconds)} s (TIME_BUDGET in prepare.py; change it there, not with --budget), "
         f"start-up allowance {_num(fit.allowance)} s, killed at {_num(2 * fit.seconds + fit.allowance)} s")
    echo(f"  run: {fit.run}")
    echo(f"    because {fit.why}.")
    if fit.missing_modules:
        echo(f"  Warning: this Python ({sys.executable}) cannot import {', '.join(fit.missing_modules)}, which "
             "prepare.py/train.py import: install them into it, or the runs will crash.")
    echo(f"  Data: training reads {fit.cache} (an allow-listed sandbox); the validation shard and the tokenizer are "
         "protected by content. Nothing can be hidden: train.py reads the validation shard to score itself.")
    if not fit.cache_known:
        echo(f"  CACHE_DIR in prepare.py is not a plain path, so adopt assumed {DEFAULT_CACHE}: check [sandbox].")
    echo(f"  The metric is self-reported: train.py, which the agent edits, computes and prints {fit.metric}, so an "
         "agent could forge or game it. The harness still enforces the time limit, the locked prepare.py, the "
         "protected data and noise-aware keeps.")
    if program_existed:
        echo(f"  {PROGRAM_OUT} already exists, so it was left as it is and is the program the agent reads.")
    elif had_program:
        echo(f"  {PROGRAM_OUT}: {PROGRAM} without the loop, git and logging steps the harness now does (your "
             f"{PROGRAM} is unchanged, and locked); the agent reads this one.")
    else:
        echo(f"  {PROGRAM_OUT}: a short program (there was no {PROGRAM}); write your goals and ideas into it.")
    if GITIGNORE in written:
        echo(f"  {GITIGNORE}: now leaves .autoresearch/ and results.tsv untracked.")
    if fit.uses_kernels and not Path(os.path.expanduser(HF_HUB_CACHE)).is_dir():
        echo(f"  train.py fetches a kernel from the Hugging Face Hub: mkdir -p {HF_HUB_CACHE} so that runs keep it.")
    echo(committed)
    echo("Next: autoresearch prepare   (downloads the data and trains the tokenizer: `" + fit.setup + "`)")
    echo("      autoresearch run       (the baseline, then experiments; --agent for an LLM or a coding-agent CLI)")
