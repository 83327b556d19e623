"""The summary-block parser: `---` then `key: value` lines, as the anchor prints them."""

import math

from autoresearch.summary import parse_summary


def test_parses_the_anchor_block():
    text = "step 1 | loss 3.2\n---\nval_bpb:          0.997900\ntraining_seconds: 300.1\ndepth:            8\n"
    assert parse_summary(text) == {"val_bpb": 0.9979, "training_seconds": 300.1, "depth": 8.0}


def test_last_block_wins_and_a_traceback_ends_it():
    text = "---\nval_bpb: 9\n---\nval_bpb: 1.5\nTraceback (most recent call last):\nx: 2\n"
    assert parse_summary(text) == {"val_bpb": 1.5}


def test_nan_and_text_values_and_no_block():
    values = parse_summary("---\nval_bpb: nan\nnote: fine\n")
    assert math.isnan(values["val_bpb"]) and values["note"] == "fine"
    assert parse_summary("no block here\n") == {}
