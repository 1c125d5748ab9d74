from __future__ import annotations

import os
from pathlib import Path

import pytest

try:  # two shared cores: one thread each is faster than fighting over them
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def sepme_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty store."""
    home = tmp_path / "sepme-home"
    monkeypatch.setenv("SEPME_HOME", str(home))
    monkeypatch.setenv("SEPME_LOCK_TIMEOUT", "2")
    monkeypatch.delenv("SEPME_DEBUG", raising=False)
    return home


@pytest.fixture
def store(sepme_home: Path):
    from sepme_engine.store import Store

    return Store(sepme_home)


@pytest.fixture(autouse=True)
def _shared_pipelines_unchanged(request: pytest.FixtureRequest):
    """Pipelines from `tests._tiny.shared_pipeline` live for the whole session: after each test,
    every one the test received (as a fixture or by calling it) must have the fingerprint it was
    built with. A test that changes a pipeline takes `copy.deepcopy` of it instead."""
    from tests import _tiny

    _tiny.TOUCHED.clear()
    yield
    known = {id(p): (p, fp) for p, fp in _tiny.shared_pipelines()}
    used = {id(p) for p in _tiny.TOUCHED}
    used |= {id(v) for v in request.node.funcargs.values() if id(v) in known}
    for key in used:
        pipe, fp = known[key]
        assert _tiny.fingerprint(pipe) == fp, (
            f"{request.node.nodeid} changed a shared pipeline: give it copy.deepcopy(pipe)"
        )
