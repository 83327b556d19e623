"""Reading a Karpathy-style repository without running its Python: the facts adopt fits the protocol to (`Fit`)."""

from __future__ import annotations

import ast
import importlib.util
import posixpath
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch import UsageError
from autoresearch.config import CONFIG_FILE
from autoresearch.sandbox import SYSTEM_DIRS

PROGRAM = "program.md"
PROGRAM_OUT = "program.autoresearch.md"
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
