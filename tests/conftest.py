"""Shared fixtures: the gpt template's files, its prepare module loaded in isolation, a private cache."""

import importlib.util
import sys
from pathlib import Path

import pytest

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "src" / "autoresearch" / "templates" / "gpt"


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A fresh AUTORESEARCH_CACHE for this test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(path))
    return path


@pytest.fixture
def prepare(cache_dir, monkeypatch):
    """The template's prepare.py as a module, with the cache pointed at a temporary folder."""
    spec = importlib.util.spec_from_file_location("gpt_prepare_under_test", TEMPLATE_DIR / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def kjv_cache(tmp_path_factory):
    """The embedded corpus prepared once per session (data + a CPU-size tokenizer); returns the cache root."""
    root = tmp_path_factory.mktemp("kjv-cache")
    spec = importlib.util.spec_from_file_location("gpt_prepare_session", TEMPLATE_DIR / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    mp = pytest.MonkeyPatch()
    mp.setenv("AUTORESEARCH_CACHE", str(root))
    try:
        module.main(["--dataset", "kjv", "--vocab-size", "1024"])
    finally:
        mp.undo()
    return root
