"""Parsing a model's reply into edits, and applying them: formats, path lines, whole files, and the error messages."""

import textwrap

from autoresearch.agents.edits import apply_edits, closest_lines, describe_errors, parse_reply

TRAIN = textwrap.dedent("""\
    import numpy as np

    LR = 0.1
    STEPS = 40


    def train(x, y):
        w = np.zeros(3)
        for _ in range(STEPS):
            w -= LR * grad(x, y, w)
        return w
""")
FILES = {"train.py": TRAIN, "model.py": "WIDTH = 64\nDEPTH = 2\n"}


def editable(path):
    return path in ("train.py", "model.py", "extra.py")


def block(search, replace):
    return f"<<<<<<< SEARCH\n{search}=======\n{replace}>>>>>>> REPLACE\n"


def test_bare_block_with_description():
    reply = "DESCRIPTION: raise the learning rate\n\ntrain.py\n" + block("LR = 0.1\n", "LR = 0.3\n")
    parsed = parse_reply(reply)
    assert parsed.description == "raise the learning rate"
    files, errors = apply_edits(FILES, parsed, editable)
    assert errors == []
    assert files["train.py"] == TRAIN.replace("LR = 0.1", "LR = 0.3")
    assert files["model.py"] == FILES["model.py"]


def test_fenced_blocks_several_per_reply_and_files():
    reply = ("Here is my plan.\n**Description:** wider and longer\n\n"
             "train.py\n```python\n" + block("STEPS = 40\n", "STEPS = 80\n") + "```\n\n"
             "```python\n" + block("LR = 0.1\n", "LR = 0.05\n") + "```\n"
             "model.py\n```\n" + block("WIDTH = 64\n", "WIDTH = 128\n") + block("DEPTH = 2\n", "DEPTH = 3\n") + "```\n")
    parsed = parse_reply(reply)
    assert parsed.description == "wider and longer"
    assert [e.path for e in parsed.edits] == ["train.py", "train.py", "model.py", "model.py"]  # the path carries over
    files, errors = apply_edits(FILES, parsed, editable)
    assert errors == []
    assert "STEPS = 80" in files["train.py"] and "LR = 0.05" in files["train.py"]
    assert files["model.py"] == "WIDTH = 128\nDEPTH = 3\n"


def test_file_path_line_variants():
    for line in ("train.py", "`train.py`", "# train.py", "### `train.py`", "File: train.py", "**train.py**",
                 "train.py:", "./train.py", "Path: `train.py`"):
        parsed = parse_reply(f"DESCRIPTION: x\n{line}\n" + block("LR = 0.1\n", "LR = 0.2\n"))
        assert [e.path for e in parsed.edits] == ["train.py"], line


def test_path_inside_the_fence_and_in_the_info_string():
    inside = parse_reply("```\nmodel.py\n" + block("DEPTH = 2\n", "DEPTH = 4\n") + "```\n")
    info = parse_reply("```python model.py\n" + block("DEPTH = 2\n", "DEPTH = 4\n") + "```\n")
    assert [e.path for e in inside.edits] == [e.path for e in info.edits] == ["model.py"]


def test_whole_file_reply():
    new = "WIDTH = 256\nDEPTH = 6\n"
    parsed = parse_reply(f"DESCRIPTION: a bigger model\n\nmodel.py\n```python\n{new}```\n")
    assert len(parsed.edits) == 1 and parsed.edits[0].search is None
    files, errors = apply_edits(FILES, parsed, editable)
    assert errors == [] and files["model.py"] == new


def test_code_fence_without_a_path_line_is_not_an_edit():
    parsed = parse_reply("DESCRIPTION: nothing\nFor example:\n```python\nprint('hi')\n```\n")
    assert parsed.edits == []


def test_description_falls_back_to_first_prose_line():
    parsed = parse_reply("\n  Try a cosine schedule for the learning rate.\nMore words.\ntrain.py\n" + block("LR = 0.1\n", "LR = 0.2\n"))
    assert parsed.description == "Try a cosine schedule for the learning rate."
    assert parse_reply("train.py\n" + block("a\n", "b\n")).description == ""
    long = parse_reply("DESCRIPTION: " + "x" * 500).description
    assert len(long) <= 200 and "\n" not in long


def test_no_blocks_is_no_edits():
    parsed = parse_reply("I have no further ideas; the current setup looks optimal.")
    assert parsed.edits == [] and parsed.incomplete == []


def test_mismatch_quotes_the_closest_real_lines():
    parsed = parse_reply("train.py\n" + block("LR = 0.1\nSTEPS = 4O\n", "LR = 0.1\nSTEPS = 90\n"))
    files, errors = apply_edits(FILES, parsed, editable)
    assert files == FILES
    assert [e.kind for e in errors] == ["mismatch"]
    message = errors[0].message
    assert "not found in train.py" in message
    assert "STEPS = 4O" in message  # what it searched for
    assert "(lines 3-4)" in message and "```\nLR = 0.1\nSTEPS = 40\n```" in message  # and what the file really has


def test_closest_lines_picks_the_most_similar_window():
    start, lines = closest_lines(TRAIN, "    for _ in range(STEP):\n        w -= LR * grad(x, w)\n")
    assert start == 8 and lines == ["    for _ in range(STEPS):\n", "        w -= LR * grad(x, y, w)\n"]


def test_non_editable_file_is_rejected_by_name():
    reply = ("prepare.py\n" + block("DATA = 1\n", "DATA = 2\n") + "train.py\n" + block("LR = 0.1\n", "LR = 0.2\n"))
    files, errors = apply_edits({**FILES, "prepare.py": "DATA = 1\n"}, parse_reply(reply), editable)
    assert [e.kind for e in errors] == ["locked"] and "prepare.py" in errors[0].message
    assert files["prepare.py"] == "DATA = 1\n"
    assert "LR = 0.2" in files["train.py"]  # the editable edit still applies
    _, errors = apply_edits(FILES, parse_reply("../train.py\n" + block("LR = 0.1\n", "LR = 0.2\n")), lambda p: True)
    assert [e.kind for e in errors] == ["locked"]


def test_a_search_that_matches_twice_is_an_error():
    text = "x = 1\ny = 2\nx = 1\n"
    files, errors = apply_edits({"a.py": text}, parse_reply("a.py\n" + block("x = 1\n", "x = 3\n")), lambda p: True)
    assert files["a.py"] == text
    assert [e.kind for e in errors] == ["ambiguous"] and "matches 2 places in a.py" in errors[0].message


def test_empty_search_creates_a_new_file_but_not_over_an_existing_one():
    files, errors = apply_edits(FILES, parse_reply("extra.py\n" + block("", "X = 1\n")), editable)
    assert errors == [] and files["extra.py"] == "X = 1\n"
    files, errors = apply_edits(FILES, parse_reply("train.py\n" + block("", "X = 1\n")), editable)
    assert files == FILES and [e.kind for e in errors] == ["empty_search"] and "whole file" in errors[0].message


def test_search_on_a_missing_file_is_an_error():
    _, errors = apply_edits(FILES, parse_reply("extra.py\n" + block("A = 1\n", "A = 2\n")), editable)
    assert [e.kind for e in errors] == ["missing"]


def test_unterminated_file_and_cut_off_block():
    files, errors = apply_edits({"a.py": "A = 1"}, parse_reply("a.py\n" + block("A = 1\n", "A = 2\n")), lambda p: True)
    assert errors == [] and files["a.py"] == "A = 2"  # no newline was added at the end
    cut = parse_reply("DESCRIPTION: cut\ntrain.py\n<<<<<<< SEARCH\nLR = 0.1\n=======\nLR = 0.")
    assert cut.edits == [] and cut.incomplete == ["train.py"]
    files, errors = apply_edits(FILES, cut, editable)
    assert files == FILES and [e.kind for e in errors] == ["incomplete"]
    assert parse_reply("model.py\n```\nWIDTH = 1\n").edits == []  # a whole file cut off is not applied either


def test_a_block_with_no_path_goes_to_the_only_file():
    files, errors = apply_edits({"train.py": TRAIN}, parse_reply(block("LR = 0.1\n", "LR = 0.5\n")), editable)
    assert errors == [] and "LR = 0.5" in files["train.py"]
    _, errors = apply_edits(FILES, parse_reply(block("LR = 0.1\n", "LR = 0.5\n")), editable)
    assert [e.kind for e in errors] == ["no_path"]


def test_resent_block_counts_as_applied_only_when_allowed():
    done = {"train.py": TRAIN.replace("LR = 0.1", "LR = 0.3")}
    parsed = parse_reply("train.py\n" + block("LR = 0.1\n", "LR = 0.3\n"))
    assert apply_edits(done, parsed, editable, allow_applied=True) == (done, [])
    assert [e.kind for e in apply_edits(done, parsed, editable)[1]] == ["mismatch"]


def test_describe_errors_for_the_model():
    _, errors = apply_edits(FILES, parse_reply("train.py\n" + block("LR = 1\n", "LR = 2\n")), editable)
    text = describe_errors(errors, applied=1)
    assert "1 of your edits could not be applied" in text and "LR = 0.1" in text and "do not resend" in text
