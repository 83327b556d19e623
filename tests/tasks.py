"""A small non-LM task for the loop's tests: a numpy script that prints `score: <x>` (maximize), in a real git repo."""

import sqlite3
import subprocess
import textwrap
from pathlib import Path

NUMPY_TASK = textwrap.dedent('''\
    """Least squares by gradient descent: the score is minus the final mean squared error."""
    import os  # noqa: F401 (the slow variant reads the budget)

    import numpy as np

    LR = 0.1  # step size
    STEPS = 40

    rng = np.random.default_rng(0)  # fixed data: the task is deterministic, whatever AUTORESEARCH_SEED says
    x = rng.normal(size=(64, 3))
    y = x @ np.array([1.0, -2.0, 0.5])
    w = np.zeros(3)
    for _ in range(STEPS):
        w -= LR * 2 * x.T @ (x @ w - y) / len(x)
    score = -float(np.mean((x @ w - y) ** 2))
    print("training done")
    print("---")
    print(f"score: {score:.6f}")
''')

CONFIG = textwrap.dedent('''\
    program = "program.md"
    editable = ["train.py"]
    locked = ["prepare.py", "program.md", "autoresearch.toml"]

    [commands]
    run = "python train.py"

    [metric]
    name = "score"
    direction = "maximize"

    [budget]
    seconds = 1
    timeout_factor = {factor}
    grace_seconds = {grace}
''')


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def make_task(root: Path, train: str = NUMPY_TASK, factor: float = 2.0, grace: float = 30.0,
              program: str = "Maximize the score.\n", extra_config: str = "") -> Path:
    """A workspace with train.py (editable), prepare.py and program.md (locked), committed on main."""
    root.mkdir(parents=True)
    (root / "train.py").write_text(train)
    (root / "prepare.py").write_text("# locked: the data would be made here\nDATA = 1\n")
    (root / "program.md").write_text(program)
    (root / "autoresearch.toml").write_text(CONFIG.format(factor=factor, grace=grace) + extra_config)
    (root / ".gitignore").write_text("results.tsv\n.autoresearch/\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "task")
    return root


def journal_rows(root: Path) -> list[dict]:
    """Every experiment row of the workspace's journal, as dicts, in order."""
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    db.row_factory = sqlite3.Row
    out = [dict(r) for r in db.execute("SELECT * FROM experiments ORDER BY id")]
    db.close()
    return out


# The locked evaluator of the held-out toy tasks (integrity, Ray): the score of the saved model on val.txt.
HELDOUT_EVALUATE = textwrap.dedent('''\
    """Locked: the score of the saved model on the held-out numbers."""
    import json
    import os

    import prepare

    with open(os.path.join(os.environ["AUTORESEARCH_ARTIFACTS"], "model.json")) as f:
        w = json.load(f)["w"]
    val = prepare.read_numbers("val.txt")
    print("---")
    print(f"score: {-sum((w - v) ** 2 for v in val) / len(val):.6f}")
''')
