"""The command agent with real git repos and real subprocesses: small shell scripts stand in for the coding CLI."""

import sqlite3
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from autoresearch import UsageError
from autoresearch.agents import make_agent
from autoresearch.agents.base import Context, CrashToFix
from autoresearch.agents.command import CommandAgent, described, summarize_diff
from autoresearch.config import AgentSettings
from autoresearch.session import run_session
import tasks
from tasks import NUMPY_TASK, git

TRAIN = "LR = 0.1\nSTEPS = 40\nprint('---')\nprint('score: 1.0')\n"
PROGRAM = "Maximize the score. (program marker 7f3a)\n"

def make_task(root: Path, train: str = TRAIN) -> Path:
    return tasks.make_task(root, train, program=PROGRAM)


def script(tmp_path: Path, body: str, name: str = "cli.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def agent_for(command: str, root: Path, timeout: float = 30.0) -> CommandAgent:
    return CommandAgent(AgentSettings(name="command", command=command, timeout_seconds=timeout), workspace=root)


def context(root: Path, fix: CrashToFix | None = None, workspace: bool = True) -> Context:
    return Context(PROGRAM, {"train.py": (root / "train.py").read_text()},
                   {"prepare.py": (root / "prepare.py").read_text(), "program.md": PROGRAM}, [], "score", True, 1.0,
                   fix=fix, editable=["train.py"] if workspace else [], workspace=str(root) if workspace else "")


def assert_at_head(root: Path):
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert (root / "train.py").read_text() == TRAIN


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def root(tmp_path):
    return make_task(tmp_path / "ws")


def test_an_edit_becomes_a_proposal_and_the_tree_goes_back_to_head(root, tmp_path):
    cli = script(tmp_path, """\
        sed -i 's/LR = 0.1/LR = 0.3/' train.py
        echo "thinking..."
        echo "DESCRIPTION: raise the learning rate"
        echo "bye" >&2
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    proposal = agent.propose(context(root))
    assert proposal is not None, agent.last_error
    assert proposal.description == "raise the learning rate"
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}
    assert_at_head(root)
    assert agent.spent.calls == 0 and agent.name == "command"
    prompts = root / ".autoresearch" / "prompts"
    assert (prompts / "1.md").is_file() and "bye" in (prompts / "1.log").read_text()
    agent.propose(context(root))
    assert (prompts / "2.md").is_file()


def test_the_prompt_file_holds_program_md_and_the_direct_format(root, tmp_path):
    cli = script(tmp_path, """\
        grep -q "program marker 7f3a" "$1" || exit 1
        grep -q "Edit the files directly" "$1" || exit 1
        echo "STEPS = 41" >> train.py
        echo "DESCRIPTION: one more step"
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    proposal = agent.propose(context(root))
    assert proposal is not None, agent.last_error
    assert proposal.description == "one more step"


def test_a_workspace_path_with_spaces_is_quoted(tmp_path):
    root = make_task(tmp_path / "my ws")
    cli = script(tmp_path, """\
        test -f "$1" && [ $# -eq 1 ] || exit 1
        echo "STEPS = 41" >> train.py
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    assert agent.propose(context(root)) is not None, agent.last_error


def test_an_edit_to_a_locked_file_is_rejected_and_reverted(root, tmp_path):
    cli = script(tmp_path, """\
        sed -i 's/LR = 0.1/LR = 0.3/' train.py
        echo "DATA = 2" >> prepare.py
        echo "DESCRIPTION: cheat"
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    refused = agent.propose(context(root))  # refused, so that the loop records it (invalid, with the path)
    assert refused.files == {} and refused.refused == "the command changed files that are not editable: prepare.py"
    assert refused.description == "cheat"
    assert (root / "prepare.py").read_text() == "# locked: the data would be made here\nDATA = 1\n"
    assert_at_head(root)


def test_deleting_a_locked_file_is_rejected_and_it_comes_back(root, tmp_path):
    cli = script(tmp_path, "git rm -q prepare.py\necho 'STEPS = 41' >> train.py\n")
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    assert "not editable: prepare.py" in agent.propose(context(root)).refused
    assert_at_head(root)
    assert (root / "prepare.py").is_file()


def test_a_new_file_that_is_not_editable_is_left_out_and_named(root, tmp_path):
    cli = script(tmp_path, """\
        echo "STEPS = 41" >> train.py
        mkdir -p notes/deep && echo hi > notes/deep/plan.txt
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    proposal = agent.propose(context(root))  # the CLI's notes or caches never make a proposal invalid
    assert proposal is not None and not proposal.refused, agent.last_error
    assert list(proposal.files) == ["train.py"]
    assert "left out of the proposal: notes/deep/plan.txt" in agent.last_note
    assert not (root / "notes").exists()
    assert_at_head(root)


def test_a_changed_gitignore_is_a_task_file_and_refused(root, tmp_path):
    cli = script(tmp_path, "echo 'STEPS = 41' >> train.py\necho '.aider*' >> .gitignore\n")
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    assert "not editable: .gitignore" in agent.propose(context(root)).refused
    assert_at_head(root)


def test_commits_made_by_the_cli_are_read_and_undone(root, tmp_path):
    cli = script(tmp_path, """\
        sed -i 's/STEPS = 40/STEPS = 80/' train.py
        git -c user.name=x -c user.email=x@x commit -qam "Double the training steps."
        echo ">>>>>>> REPLACE"
    """)
    head = git(root, "rev-parse", "HEAD")
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    proposal = agent.propose(context(root))
    assert proposal is not None, agent.last_error
    assert proposal.files == {"train.py": TRAIN.replace("STEPS = 40", "STEPS = 80")}
    assert proposal.description == "Double the training steps."  # the CLI's own commit message, not its last line
    assert git(root, "rev-parse", "HEAD") == head
    assert_at_head(root)


def test_a_hanging_command_is_killed_with_its_children(root, tmp_path):
    pids = tmp_path / "pids"
    cli = script(tmp_path, f"""\
        echo $$ > {pids}
        echo "STEPS = 41" >> train.py
        sleep 300 &
        echo $! >> {pids}
        wait
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root, timeout=1)
    assert agent.propose(context(root)) is None
    assert "timed out" in agent.last_error
    recorded = [int(p) for p in pids.read_text().split()]
    assert len(recorded) == 2 and not any(alive(p) for p in recorded)
    assert_at_head(root)


def test_a_failing_command_gives_no_proposal(root, tmp_path):
    cli = script(tmp_path, "echo 'STEPS = 41' >> train.py\necho 'DESCRIPTION: x'\nexit 1\n")
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    assert agent.propose(context(root)) is None
    assert "code 1" in agent.last_error
    assert_at_head(root)


def test_no_change_gives_no_proposal(root, tmp_path):
    agent = agent_for("echo 'DESCRIPTION: nothing to do'", root)
    assert agent.propose(context(root)) is None
    assert "no file" in agent.last_error


def test_without_a_description_line_or_a_commit_the_diff_is_summarized(root, tmp_path):
    cli = script(tmp_path, """\
        sed -i 's/LR = 0.1/LR = 0.3/' train.py
        echo "I raised it."
        echo ">>>>>>> REPLACE"
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    assert agent.propose(context(root)).description == "train.py: LR = 0.1 → LR = 0.3"


def test_without_any_output_the_diff_is_summarized(root, tmp_path):
    agent = agent_for("echo 'STEPS = 41' >> train.py && echo 'DROPOUT = 0' >> train.py", root)
    assert agent.propose(context(root)).description == "train.py: +2 −0 lines"


def test_description_parsing():
    assert described("DESCRIPTION: a\nmore\n**DESCRIPTION:** b\nend\n") == "b"
    assert described("\x1b[1mDESCRIPTION:\x1b[0m colored\n") == "colored"
    assert described("End with `DESCRIPTION: <what this experiment tries, in one line>`.\nlast words\n") == ""
    assert described("DESCRIPTION: >>>>>>> REPLACE\n") == ""  # never a line of edit syntax
    assert len(described("DESCRIPTION: " + "x" * 500)) == 200
    assert described("") == ""
    assert summarize_diff({"t.py": "A = 1\nB = 2\n"}, {"t.py": "A = 1\nB = 3\n"}) == "t.py: B = 2 → B = 3"


def test_a_command_without_the_placeholder_gets_the_prompt_on_stdin(root, tmp_path):
    cli = script(tmp_path, """\
        cat > got_prompt.tmp
        grep -q "program marker 7f3a" got_prompt.tmp || exit 1
        rm got_prompt.tmp
        echo "STEPS = 41" >> train.py
        echo "DESCRIPTION: read stdin"
    """)
    agent = agent_for(str(cli), root)
    proposal = agent.propose(context(root))
    assert proposal is not None, agent.last_error
    assert proposal.description == "read stdin"


def test_fix_mode_starts_from_the_crashed_version(root, tmp_path):
    crashed = TRAIN.replace("LR = 0.1", "LR = oops")
    cli = script(tmp_path, """\
        grep -q "LR = oops" train.py || exit 1
        sed -i 's/LR = oops/LR = 0.5/' train.py
        echo "DESCRIPTION: fix the typo"
    """)
    agent = agent_for(f"{cli} {{prompt_file}}", root)
    proposal = agent.propose(context(root, CrashToFix("typo", {"train.py": crashed}, "NameError: oops", 1)))
    assert proposal is not None, agent.last_error
    assert proposal.files == {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.5")}
    assert "LR = oops" in (root / ".autoresearch" / "prompts" / "1.md").read_text()
    assert_at_head(root)


def test_fix_mode_without_edits_gives_the_idea_up(root, tmp_path):
    crashed = TRAIN.replace("LR = 0.1", "LR = oops")
    agent = agent_for("echo 'DESCRIPTION: cannot fix'", root)
    assert agent.propose(context(root, CrashToFix("typo", {"train.py": crashed}, "", 1))) is None
    assert "given up" in agent.last_error
    assert_at_head(root)


def test_leftover_untracked_files_from_runs_are_not_held_against_the_cli(root, tmp_path):
    (root / "checkpoint.bin").write_bytes(b"\0\1")
    agent = agent_for("echo 'STEPS = 41' >> train.py", root)
    assert agent.propose(context(root)) is not None, agent.last_error
    assert (root / "checkpoint.bin").read_bytes() == b"\0\1"


def test_workspace_and_editable_globs_fall_back_to_the_constructor_and_config(root, tmp_path):
    agent = agent_for("echo 'STEPS = 41' >> train.py", root)
    assert agent.propose(context(root, workspace=False)) is not None, agent.last_error


def test_a_missing_command_is_a_usage_error(root):
    with pytest.raises(UsageError, match="command"):
        CommandAgent(AgentSettings(name="command"), workspace=root)
    with pytest.raises(UsageError):
        make_agent("command", AgentSettings(name="command", command="  "), workspace=root)
    assert isinstance(make_agent("command", AgentSettings(name="command", command="true"), workspace=root), CommandAgent)


def test_end_to_end_through_the_loop(tmp_path):
    root = make_task(tmp_path / "ws", NUMPY_TASK)
    cli = script(tmp_path, f"""\
        grep -q "program marker 7f3a" "$1" || exit 1
        {sys.executable} -c "import pathlib; p = pathlib.Path('train.py'); p.write_text(p.read_text().replace('LR = 0.1', 'LR = 0.3'))"
        echo "DESCRIPTION: raise the learning rate to 0.3"
    """)
    agent = CommandAgent(AgentSettings(name="command", command=f"{cli} {{prompt_file}}"), workspace=root)
    run_session(root, tag="t", agent=agent, max_experiments=1, echo=lambda *_: None)
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    rows = db.execute("SELECT description, agent, status, diff FROM experiments ORDER BY id").fetchall()
    db.close()
    assert rows[0][0] == "baseline"
    assert rows[1][:3] == ("raise the learning rate to 0.3", "command", "keep"), agent.last_error
    assert "+LR = 0.3" in rows[1][3]
    assert git(root, "status", "--porcelain") == ""


def test_a_night_through_the_loop_counts_agent_time_keeps_the_identity_and_says_what_protected_it(tmp_path, capsys):
    """Call 1 thinks for a second and changes nothing; call 2 writes an identity into .git/config with its edit;
    call 3 edits. The lost second is agent time, the config is put back, the commit is by the user as they were
    when the run started, and status claims no protection the run did not have."""
    from autoresearch.session import open_ledger
    from autoresearch.status import render_status
    from autoresearch.workspace import identity_of

    root = make_task(tmp_path / "ws", NUMPY_TASK)
    before = identity_of(root)
    calls = tmp_path / "calls"
    cli = script(tmp_path, f"""\
        echo x >> {calls}
        n=$(wc -l < {calls})
        if [ "$n" = 1 ]; then sleep 1.2; exit 0; fi
        if [ "$n" = 2 ]; then git config user.name "Your Name"; git config user.email you@example.com; fi
        sed -i "s/STEPS = 40/STEPS = 4$n/" train.py
        echo "DESCRIPTION: steps, try $n"
    """)
    agent = CommandAgent(AgentSettings(name="command", command=f"{cli} {{prompt_file}}"), workspace=root)
    run_session(root, tag="t", agent=agent, max_experiments=1, echo=lambda *_: None)
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    rows = db.execute("SELECT description, status, reason, propose_seconds, commit_sha FROM experiments ORDER BY id").fetchall()
    db.close()
    assert [r[:2] for r in rows] == [("baseline", "keep"), ("steps, try 2", "invalid"), ("steps, try 3", "keep")]
    assert "git data" in rows[1][2] and rows[1][3] >= 1.2  # call 1's second is billed to the next row
    assert "Your Name" not in (root / ".git" / "config").read_text()
    assert git(root, "log", "-1", "--format=%an|%ae", rows[2][4]) == "|".join(before)
    ledger, maximize = open_ledger(root, "t")
    render_status(ledger, maximize)
    out = " ".join(capsys.readouterr().out.split())
    assert "self-reported" in out and "held-out data not at all" not in out
    assert ("no held-out path was hidden from training" in out) or ("had no sandbox" in out)


def test_a_command_naming_a_script_that_is_not_committed_is_refused_before_any_run(tmp_path):
    root = make_task(tmp_path / "ws", NUMPY_TASK)
    toml = root / "autoresearch.toml"
    toml.write_text(toml.read_text().replace('run = "python train.py"', 'run = "python train.py"\nevaluate = "python evaluate.py"'))
    git(root, "commit", "-qam", "an evaluator that is not there")
    agent = CommandAgent(AgentSettings(name="command", command="true"), workspace=root)
    with pytest.raises(UsageError, match="commands.evaluate runs evaluate.py, which is not committed"):
        run_session(root, tag="t", agent=agent, max_experiments=1, echo=lambda *_: None)
    assert not (root / "results.tsv").exists()


def test_a_run_refused_for_an_uncommitted_config_leaves_no_branch_behind(tmp_path):
    """The first run of a repo whose autoresearch.toml is not committed yet is refused; once it is committed, the
    same tag starts from that commit (the refused run made no branch at the commit without it)."""
    root = make_task(tmp_path / "ws", NUMPY_TASK)
    git(root, "rm", "-q", "--cached", "autoresearch.toml")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "not yet")
    agent = CommandAgent(AgentSettings(name="command", command="true"), workspace=root)
    with pytest.raises(UsageError, match="commit it first"):
        run_session(root, tag="t", agent=agent, max_experiments=0, echo=lambda *_: None)
    assert git(root, "branch", "--list", "autoresearch/t") == ""
    git(root, "add", "autoresearch.toml")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "now")
    run_session(root, tag="t", agent=agent, max_experiments=0, echo=lambda *_: None)
    assert (root / "results.tsv").read_text().count("baseline") == 1
