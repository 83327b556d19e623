"""The tune agent: constant discovery, search-space rules, byte-exact rewrites, Optuna ask/tell, and the real loop."""

import ast
import hashlib
import math
import re
import sqlite3
import textwrap
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import RandomSampler, TPESampler
from optuna.trial import TrialState

from autoresearch import UsageError
from autoresearch.agents import make_agent
from autoresearch.agents.base import Context, CrashToFix, Result
from autoresearch.agents.tune import (TuneAgent, compact, default_distribution, distribution_for, find_constants,
                                      rewrite)
from autoresearch.config import AgentSettings, TuneSpace
from autoresearch.session import run_session
from tasks import NUMPY_TASK, make_task

TEMPLATE_TRAIN = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt" / "train.py"


def values(source, device="cpu"):
    return {c.name: c.value for c in find_constants(source, device)}


def context(source, best=1.0, maximize=False, **kw):
    return Context("", {"train.py": source}, {}, [], "m", maximize, best, **kw)


def lines(text):
    """Lines as Python's parser counts them (\\r\\n, \\r, \\n), each with its break."""
    return re.findall(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$", text)


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------

DISCOVERY = textwrap.dedent('''\
    import os
    CUDA = torch.cuda.is_available()
    LR = 0.04  # a comment
    STEPS = 1_000
    SHIFT = -3
    OFFSET = - 0.5
    DEPTH = 8 if CUDA else 4  # device branch
    WIDTH = 512 if CUDA else 256 if MPS else 128
    ODD = 1 if DEBUG else 2
    FLAG = True
    OFF = False
    NAME = "gpt"
    BATCH = 2**12
    SEED = int(os.environ.get("SEED", "1"))
    TWICE = 1
    TWICE = 2
    lower_case = 3
    BETA: float = 0.9
    A = B = 5
    CPLX = 1j

    def f():
        INNER = 3
''')


def test_discovery_finds_literals_negatives_and_the_device_branch():
    assert values(DISCOVERY, "cpu") == {"LR": 0.04, "STEPS": 1000, "SHIFT": -3, "OFFSET": -0.5, "DEPTH": 4,
                                        "WIDTH": 128, "BETA": 0.9}
    assert values(DISCOVERY, "cuda")["DEPTH"] == 8 and values(DISCOVERY, "cuda")["WIDTH"] == 512
    assert values(DISCOVERY, "mps")["WIDTH"] == 256 and values(DISCOVERY, "mps")["DEPTH"] == 4
    # bools, strings, computed values, other conditionals, reassigned names, chained targets: skipped
    assert not {"FLAG", "OFF", "NAME", "BATCH", "SEED", "ODD", "TWICE", "A", "B", "CPLX", "INNER", "CUDA"} & set(values(DISCOVERY))


def test_discovery_on_the_gpt_template():
    found = values(TEMPLATE_TRAIN.read_text())
    assert found["DEPTH"] == 4 and found["MODEL_DIM"] == 128 and found["MATRIX_LR"] == 0.04 and found["COMPILE"] == 0
    assert found["TOTAL_BATCH_SIZE"] == 4096  # a power of two, searched as one
    assert "TIME_BUDGET" not in found and "SEED" not in found  # computed from the environment
    assert values(TEMPLATE_TRAIN.read_text(), "cuda")["DEPTH"] == 8


def test_rewrite_changes_only_the_literals():
    source = DISCOVERY
    consts = {c.name: c for c in find_constants(source)}
    out = rewrite(source, [(consts["LR"], 0.05), (consts["SHIFT"], -7), (consts["DEPTH"], 6), (consts["OFFSET"], 0.25)])
    assert values(out) == {**values(source), "LR": 0.05, "SHIFT": -7, "DEPTH": 6, "OFFSET": 0.25}
    assert "LR = 0.05  # a comment\n" in out and "DEPTH = 8 if CUDA else 6  # device branch\n" in out
    assert "SHIFT = -7\n" in out and "OFFSET = 0.25\n" in out
    changed = [i for i, (a, b) in enumerate(zip(lines(source), lines(out))) if a != b]
    assert changed == [2, 4, 5, 6]


# ---------------------------------------------------------------------------
# The space
# ---------------------------------------------------------------------------

def test_space_rules():
    assert default_distribution("MATRIX_LR", 0.04) == FloatDistribution(0.01, 0.16, log=True)
    assert default_distribution("MODEL_DIM", 128) == CategoricalDistribution([32, 64, 128, 256, 512])
    assert default_distribution("DEPTH", 4) == IntDistribution(2, 8)  # small counts are ints, not powers of two
    assert default_distribution("STEPS", 3) == IntDistribution(1, 6)
    assert default_distribution("SHIFT", -5) == IntDistribution(-10, -2)
    assert default_distribution("COMPILE", 0) == CategoricalDistribution([0, 1])
    assert default_distribution("WARMDOWN_RATIO", 0.5) == FloatDistribution(0.25, 0.75)
    assert default_distribution("WARMUP_RATIO", 0.0) == FloatDistribution(0.0, 0.25)
    assert default_distribution("FINAL_LR_FRAC", 0.9) == FloatDistribution(0.65, 1.0)
    assert default_distribution("ADAM_BETA2", 0.95) == FloatDistribution(0.7, 1.0)
    assert default_distribution("MLP_RATIO", 4) == IntDistribution(2, 8)  # a "ratio" above 1 is a plain int
    assert default_distribution("WEIGHT_DECAY", 0.0) == FloatDistribution(0.0, 0.1)
    assert default_distribution("BIAS", -1.0) == FloatDistribution(-4.0, -0.25)
    assert default_distribution("GRAD_CLIP", 1.0) == FloatDistribution(0.25, 4.0, log=True)  # (0, 1] alone: no ratio


def test_space_overrides():
    assert distribution_for("LR", 0.04, TuneSpace(fixed=True)) is None
    assert distribution_for("LR", 0.04, TuneSpace(low=0.001, high=0.1)) == FloatDistribution(0.001, 0.1, log=True)
    assert distribution_for("LR", 0.04, TuneSpace(log=False)) == FloatDistribution(0.01, 0.16)
    assert distribution_for("DEPTH", 4, TuneSpace(low=2.5, high=12)) == IntDistribution(3, 12)  # ints stay ints
    assert distribution_for("DIM", 128, TuneSpace(high=1024)) == IntDistribution(32, 1024, log=True)
    assert distribution_for("DIM", 128, TuneSpace(choices=[64, 96, 128])) == CategoricalDistribution([64, 96, 128])
    assert distribution_for("LR", 0.04, TuneSpace(choices=[0.01, 0.1])) == CategoricalDistribution([0.01, 0.1])
    with pytest.raises(UsageError, match=r"agent\.tune\.LR.*log"):
        distribution_for("LR", 0.04, TuneSpace(low=0.0))
    with pytest.raises(UsageError, match="above"):
        distribution_for("LR", 0.04, TuneSpace(low=1.0, high=0.5))


def test_overrides_shape_what_is_proposed():
    source = "LR = 0.04\nDEPTH = 4\nDIM = 128\n"
    tune = {"LR": TuneSpace(fixed=True), "DIM": TuneSpace(choices=[64, 128])}
    agent = TuneAgent(AgentSettings(tune=tune), seed=3)
    seen = set()
    for _ in range(12):
        proposal = agent.propose(context(source))
        if proposal is None:
            break
        new = values(proposal.files["train.py"])
        assert new["LR"] == 0.04 and new["DIM"] in (64, 128) and 2 <= new["DEPTH"] <= 8
        seen |= {name for name in new if new[name] != values(source)[name]}
        agent.observe(Result(proposal.description, "discard", 2.0))
    assert seen == {"DEPTH", "DIM"}
    assert set(agent.space) == {"DEPTH", "DIM"}


# ---------------------------------------------------------------------------
# Byte-exact rewrites: a property over random layouts
# ---------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,7}", fullmatch=True).filter(lambda n: n not in ("CUDA", "MPS"))
NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False))
COMMENT_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=20)
SPACES = st.sampled_from(["", " ", "  ", "\t"])


@st.composite
def module(draw):
    """A module of random constants (plain, negative, parenthesised, annotated, device branches) amid noise."""
    names = draw(st.lists(NAMES, min_size=1, max_size=8, unique=True))
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    out, old, new = [], {}, {}
    for name in names:
        for _ in range(draw(st.integers(0, 2))):  # noise between constants
            out.append(draw(st.sampled_from(["", "# " + draw(COMMENT_TEXT), "x = 1  # lower case", "def f():\n    Y = 2",
                                             "import os", "TEXT = 'a = 1'", "  # indented comment"])))
        value = draw(NUMBERS)
        literal = draw(st.sampled_from([repr, lambda v: f"({v!r})", lambda v: f"- {-v!r}" if v < 0 else repr(v)]))(value)
        rhs = draw(st.sampled_from(["{}", "7 if CUDA else {}", "3 if CUDA else {}", "-2.5 if CUDA else {}  # cpu"]))
        annotation = draw(st.sampled_from(["", ": float", ":int"]))
        text = f"{name}{annotation}{draw(SPACES)}={draw(SPACES)}{rhs.format(literal)}"
        if draw(st.booleans()):
            text += f"{draw(SPACES)}# {draw(COMMENT_TEXT)}"
        out.append(text)
        old[name] = value
        if draw(st.booleans()):
            new[name] = draw(NUMBERS)
    source = newline.join(o.replace("\n", newline) for o in out) + draw(st.sampled_from(["", newline]))
    return source, old, new


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(module())
def test_rewrite_is_byte_identical_except_the_changed_literals(case):
    source, old, new = case
    consts = {c.name: c for c in find_constants(source, "cpu")}
    assert {n: c.value for n, c in consts.items()} == old
    out = rewrite(source, [(consts[n], v) for n, v in new.items()])
    before, after = lines(source), lines(out)
    assert len(before) == len(after)
    changed_lines = {consts[n].lineno - 1 for n in new}
    for i, (a, b) in enumerate(zip(before, after)):
        if i not in changed_lines:
            assert a == b
    for name, value in new.items():  # the rest of a changed line is kept: only the literal's span differs
        c = consts[name]
        a, b = before[c.lineno - 1].encode(), after[c.lineno - 1].encode()
        assert b.startswith(a[:c.col]) and b.endswith(a[c.end_col:])
        literal = b[c.col:len(b) - (len(a) - c.end_col)].decode()
        assert ast.literal_eval(literal) == value and type(ast.literal_eval(literal)) is type(value)
    assert values(out, "cpu") == {**old, **new}


# ---------------------------------------------------------------------------
# Ask and tell
# ---------------------------------------------------------------------------

SMALL = "LR = 0.04  # learning rate\nDEPTH = 4\nWIDTH = 128\nDROPOUT = 0.1\nNAME = 'x'\n"


def test_a_proposal_names_its_changes_and_rewrites_only_them():
    agent = TuneAgent(seed=0)
    proposal = agent.propose(context(SMALL))
    new = values(proposal.files["train.py"])
    changed = [n for n in new if new[n] != values(SMALL)[n]]
    assert 1 <= len(changed) <= 3
    parts = proposal.description.split(", ")
    assert [p.split(" ")[0] for p in parts] == changed
    for part, name in zip(parts, changed):
        assert part == f"{name} {compact(values(SMALL)[name])}→{compact(new[name])}"
    for a, b in zip(lines(SMALL), lines(proposal.files["train.py"])):
        assert a == b or a.split("=")[0] in [f"{n} " for n in changed]
    assert agent.name == "tune" and agent.spent.cost_usd == 0 and agent.spent.calls == 0


def test_compact_numbers():
    assert compact(0.04) == "0.04" and compact(0.0512345) == "0.0512" and compact(4) == "4" and compact(15.0) == "15"
    assert compact(0.000123456) == "0.000123"


def test_observe_tells_optuna():
    agent = TuneAgent(seed=1)
    outcomes = [("keep", 0.9), ("discard", 1.3), ("crash", None), ("timeout", None), ("invalid", None),
                ("duplicate", None), ("discard", 1.1)]
    for status, metric in outcomes:
        proposal = agent.propose(context(SMALL, best=1.0))
        agent.observe(Result(proposal.description, status, metric))
    trials = agent.study.trials
    assert trials[0].state == TrialState.COMPLETE and trials[0].value == 1.0  # the parent, told as the baseline
    assert trials[0].params == {"LR": 0.04, "DEPTH": 4, "WIDTH": 128, "DROPOUT": 0.1}
    told = [t for t in trials[1:] if t.user_attrs.get("status") not in ("no change", "already proposed")]
    assert [(t.state, t.value, t.user_attrs["status"]) for t in told] == [
        (TrialState.COMPLETE, 0.9, "keep"), (TrialState.COMPLETE, 1.3, "discard"), (TrialState.FAIL, None, "crash"),
        (TrialState.FAIL, None, "timeout"), (TrialState.FAIL, None, "invalid"), (TrialState.FAIL, None, "duplicate"),
        (TrialState.COMPLETE, 1.1, "discard")]
    assert agent.study.direction == optuna.study.StudyDirection.MINIMIZE
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_direction_follows_the_context():
    agent = TuneAgent(seed=0)
    agent.propose(context(SMALL, maximize=True))
    assert agent.study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_fix_mode_and_missing_target_give_up():
    agent = TuneAgent(seed=0)
    fix = CrashToFix("x", {"train.py": SMALL}, "Traceback", 1)
    assert agent.propose(context(SMALL, fix=fix)) is None
    assert agent.propose(Context("", {"other.py": SMALL}, {}, [], "m", False, 1.0)) is None
    assert agent.propose(context("import os\nX = os.sep\n")) is None  # nothing to tune


def test_several_awaited_proposals_get_their_own_results_in_any_order():
    """With K workers, proposals await their results together: each result is told to the trial of the file it
    measured, whatever the order they finish in."""
    agent = TuneAgent(seed=0)
    first, second = agent.propose(context(SMALL)), agent.propose(context(SMALL))
    assert first.files != second.files
    agent.observe(Result(second.description, "discard", 5.0, extra={"files": second.files}))
    agent.observe(Result(first.description, "keep", 0.5, extra={"files": first.files}))
    told = {t.user_attrs["digest"]: t.value for t in agent.study.trials if t.state == TrialState.COMPLETE}
    assert told[hashlib.sha256(first.files["train.py"].encode()).hexdigest()] == 0.5
    assert told[hashlib.sha256(second.files["train.py"].encode()).hexdigest()] == 5.0
    agent.observe(Result("a re-base", "keep", 0.1, extra={"files": {"train.py": "X = 1\n"}}))  # not its proposal
    assert sum(t.state == TrialState.COMPLETE for t in agent.study.trials) == 3  # the parent and the two


def test_proposals_never_observed_are_failed_beyond_the_cap(monkeypatch):
    monkeypatch.setattr("autoresearch.agents.tune.MAX_PENDING", 1)
    agent = TuneAgent(seed=0)
    agent.propose(context(SMALL))
    agent.propose(context(SMALL))
    agent.propose(context(SMALL))
    states = [t.state for t in agent.study.trials]
    assert states.count(TrialState.RUNNING) == 2 and TrialState.FAIL in states


def test_exhausted_space_stops_without_looping():
    agent = TuneAgent(seed=0, max_asks=10)
    source = "FLAG = 0\n"
    first = agent.propose(context(source))
    assert first.description == "FLAG 0→1"
    agent.observe(Result(first.description, "discard", 2.0))
    assert agent.propose(context(source)) is None  # the only other value was measured: bounded retries, then None
    assert len(agent.study.trials) <= 2 + 10


def test_same_seed_same_proposals_and_the_random_arm():
    def run(agent):
        out = []
        for i in range(6):
            proposal = agent.propose(context(SMALL))
            out.append(proposal.description)
            agent.observe(Result(proposal.description, "discard", 1.0 + i / 10))
        return out
    assert run(TuneAgent(seed=5)) == run(TuneAgent(seed=5))
    assert isinstance(TuneAgent(seed=5).sampler, TPESampler)
    assert isinstance(TuneAgent(seed=5, sampler="random").sampler, RandomSampler)
    assert run(TuneAgent(seed=5, sampler="random")) == run(TuneAgent(seed=5, sampler="random"))
    with pytest.raises(ValueError):
        TuneAgent(sampler="grid")


def test_the_factory_builds_it():
    agent = make_agent("tune", AgentSettings(tune={"LR": TuneSpace(fixed=True)}), seed=2)
    assert isinstance(agent, TuneAgent) and agent.seed == 2


def test_a_value_outside_its_range_is_changed_until_kept():
    agent = TuneAgent(AgentSettings(tune={"LR": TuneSpace(low=0.1, high=0.2)}), seed=0)
    source = "LR = 0.04\nDEPTH = 4\n"
    for _ in range(3):
        proposal = agent.propose(context(source))
        assert 0.1 <= values(proposal.files["train.py"])["LR"] <= 0.2
        agent.observe(Result(proposal.description, "discard", 2.0))


# ---------------------------------------------------------------------------
# It searches: a toy objective in a workspace-free loop
# ---------------------------------------------------------------------------

TOY = "LR = 0.004\nWIDTH = 32\nDROPOUT = 0.6\nDEPTH = 12\nWEIGHT_DECAY = 0.0\n"


def toy_loss(v):
    """Minimum 0 at LR 0.01, WIDTH 128, DROPOUT 0.4, DEPTH 6, WEIGHT_DECAY 0.05 (all inside the space)."""
    return (math.log(v["LR"] / 0.01) ** 2 + 0.5 * math.log2(v["WIDTH"] / 128) ** 2 + 10 * (v["DROPOUT"] - 0.4) ** 2
            + ((v["DEPTH"] - 6) / 3) ** 2 + 100 * (v["WEIGHT_DECAY"] - 0.05) ** 2)


def search(agent, n=20):
    source, best = TOY, toy_loss(values(TOY))
    for _ in range(n):
        proposal = agent.propose(context(source, best=best))
        loss = toy_loss(values(proposal.files["train.py"]))
        keep = loss < best
        agent.observe(Result(proposal.description, "keep" if keep else "discard", loss))
        if keep:
            source, best = proposal.files["train.py"], loss
    return best


def test_tpe_improves_on_the_start():
    start = toy_loss(values(TOY))
    best = search(TuneAgent(seed=0))
    assert best < 0.5 * start


def test_tpe_beats_random_search_on_the_toy_over_seeds():
    """Same space, same subsets, only the sampler differs; seeded, so deterministic for a given Optuna."""
    tpe = sorted(search(TuneAgent(seed=s)) for s in range(20))
    rnd = sorted(search(TuneAgent(seed=s, sampler="random")) for s in range(20))
    assert tpe[10] < rnd[10]  # the median best


# ---------------------------------------------------------------------------
# End to end through the real loop
# ---------------------------------------------------------------------------

def test_end_to_end_through_the_loop(tmp_path):
    root = make_task(tmp_path / "ws")
    run_session(root, tag="t", agent_name="tune", max_experiments=5, echo=lambda *_: None)
    db = sqlite3.connect(root / ".autoresearch" / "journal.sqlite")
    rows = db.execute("SELECT description, agent, status, metric FROM experiments ORDER BY id").fetchall()
    db.close()
    assert rows[0][0] == "baseline" and len(rows) == 6
    for description, agent, status, metric in rows[1:]:
        assert agent == "tune" and status in ("keep", "discard")
        assert re.fullmatch(r"(LR|STEPS) [-\d.e]+→[-\d.e]+(, (LR|STEPS) [-\d.e]+→[-\d.e]+)?", description)
    best = max(r[3] for r in rows)
    final = (root / "train.py").read_text()
    assert final.count("\n") == NUMPY_TASK.count("\n") and "LR = " in final and "# step size" in final
    assert best >= rows[0][3]


# ---------------------------------------------------------------------------
# A stored study: kill, restart, carry on
# ---------------------------------------------------------------------------

def stored_study(path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    return optuna.load_study(study_name="tune", storage=storage)


def steps(agent, source, best, n):
    """`n` proposals measured on the toy, the best kept as the parent as the harness would; the proposed texts."""
    texts = []
    for _ in range(n):
        proposal = agent.propose(context(source, best=best))
        assert proposal is not None
        text = proposal.files["train.py"]
        texts.append(text)
        loss = toy_loss(values(text))
        keep = loss < best
        agent.observe(Result(proposal.description, "keep" if keep else "discard", loss))
        if keep:
            source, best = text, loss
    return source, best, texts


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_restarted_agent_carries_on_the_stored_study(tmp_path, sampler):
    path = tmp_path / "tune.journal"
    first = TuneAgent(seed=0, storage=str(path), sampler=sampler)
    source, best, before = steps(first, TOY, toy_loss(values(TOY)), 8)
    first_values = [t.value for t in first.study.trials if t.state == TrialState.COMPLETE]
    space = dict(first.space)
    del first  # as after SIGKILL: nothing but the file survives

    second = TuneAgent(seed=0, storage=str(path), sampler=sampler)
    _, _, after = steps(second, source, best, 8)
    assert not set(after) & set(before) and len(set(after)) == 8 and TOY not in after
    assert second.space == space
    skipped = [t for t in second.study.trials if t.user_attrs.get("status") == "already proposed"]
    assert len(skipped) <= 2  # reseeded draws, not a replay of the first run's rejected one by one

    trials = stored_study(path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 1 + 16 and [t.user_attrs["status"] for t in trials].count("parent") == 1
    assert complete[0].user_attrs["status"] == "parent" and complete[0].value == toy_loss(values(TOY))
    assert [t.value for t in complete[:9]] == first_values
    assert [t.value for t in complete[9:]] == [toy_loss(values(text)) for text in after]
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert {t.user_attrs["digest"] for t in complete[1:]} == {hashlib.sha256(x.encode()).hexdigest()
                                                             for x in before + after}


def test_the_stored_space_outlives_a_moved_parent(tmp_path):
    path = str(tmp_path / "tune.journal")
    first = TuneAgent(seed=0, storage=path)
    proposal = first.propose(context(SMALL))
    first.observe(Result(proposal.description, "discard", 2.0))
    assert first.space["LR"] == FloatDistribution(0.01, 0.16, log=True)

    moved = SMALL.replace("LR = 0.04", "LR = 0.08")
    second = TuneAgent(seed=0, storage=path)
    proposal = second.propose(context(moved))
    assert second.space == first.space and second.space["LR"] == FloatDistribution(0.01, 0.16, log=True)
    assert 0.01 <= values(proposal.files["train.py"])["LR"] <= 0.16
    second.observe(Result(proposal.description, "discard", 2.0))
    stored = stored_study(path)
    assert optuna.distributions.json_to_distribution(stored.user_attrs["space"]["LR"]) == first.space["LR"]
    assert stored.user_attrs["target"] == "train.py"
    assert [t.user_attrs.get("status") for t in stored.trials].count("parent") == 1


def test_a_trial_left_running_by_a_kill_is_told_its_remeasured_result(tmp_path):
    path = str(tmp_path / "tune.journal")
    first = TuneAgent(seed=0, storage=path)
    proposal = first.propose(context(SMALL))
    number = next(iter(first.pending.values())).number
    del first  # killed while the candidate ran: the trial stays RUNNING in the file
    assert stored_study(path).trials[number].state == TrialState.RUNNING

    second = TuneAgent(seed=0, storage=path)
    second.observe(Result(proposal.description, "discard", 1.7))  # the harness re-measured it on resume
    trial = stored_study(path).trials[number]
    assert trial.state == TrialState.COMPLETE and trial.value == 1.7 and trial.user_attrs["status"] == "discard"
    again = second.propose(context(SMALL))
    assert again is not None and again.files["train.py"] != proposal.files["train.py"]
    second.observe(Result(again.description, "keep", 0.9))
    assert all(t.state != TrialState.RUNNING for t in stored_study(path).trials)


def test_a_trial_left_running_stays_awaited_while_new_proposals_come(tmp_path):
    """With K workers a result may come after later proposals: a trial a kill left RUNNING is not failed by a new
    proposal; its file counts as proposed, and its result, matched by the file, is told to it."""
    path = str(tmp_path / "tune.journal")
    first = TuneAgent(seed=0, storage=path)
    proposal = first.propose(context(SMALL))
    number = next(iter(first.pending.values())).number
    del first

    second = TuneAgent(seed=0, storage=path)
    again = second.propose(context(SMALL))
    assert stored_study(path).trials[number].state == TrialState.RUNNING
    assert again.files["train.py"] != proposal.files["train.py"]  # its file counts as proposed
    second.observe(Result(again.description, "discard", 1.2, extra={"files": again.files}))
    second.observe(Result(proposal.description, "discard", 1.4, extra={"files": proposal.files}))
    trials = stored_study(path).trials
    assert trials[-1].value == 1.2 and trials[number].state == TrialState.COMPLETE and trials[number].value == 1.4


def test_running_trials_without_a_file_are_failed_as_interrupted(tmp_path):
    path = str(tmp_path / "tune.journal")
    first = TuneAgent(seed=0, storage=path)
    first.propose(context(SMALL))
    proposed = next(iter(first.pending.values())).number
    first.study.ask()  # a RUNNING trial with no file: asked, never proposed (a kill in between)
    bare = len(first.study.trials) - 1
    del first

    second = TuneAgent(seed=0, storage=path)
    second.observe(Result("x", "discard", 1.5))  # a result that names no file: the oldest awaited proposal's
    trials = stored_study(path).trials
    assert trials[bare].state == TrialState.FAIL and trials[bare].user_attrs["status"] == "interrupted"
    assert trials[proposed].state == TrialState.COMPLETE and trials[proposed].value == 1.5


def test_a_stored_study_for_another_file_or_direction_is_refused(tmp_path):
    path = str(tmp_path / "tune.journal")
    agent = TuneAgent(seed=0, storage=path)
    agent.observe(Result("x", "discard", 1.0))  # nothing stored yet: a no-op
    agent.propose(context(SMALL))
    with pytest.raises(UsageError, match="maximize|minimize"):
        TuneAgent(seed=0, storage=path).propose(context(SMALL, maximize=True))
    other = TuneAgent(seed=0, storage=path, target="model.py")
    with pytest.raises(UsageError, match="train.py"):
        other.propose(Context("", {"model.py": SMALL}, {}, [], "m", False, 1.0))


def test_a_storage_object_and_study_names(tmp_path):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log")))
    a, b = TuneAgent(seed=0, storage=storage, study_name="a"), TuneAgent(seed=0, storage=storage, study_name="b")
    for agent in (a, b):
        proposal = agent.propose(context(SMALL))
        agent.observe(Result(proposal.description, "discard", 2.0))
    assert sorted(optuna.study.get_all_study_names(storage)) == ["a", "b"]
    assert TuneAgent().study is None and TuneAgent().storage is None
