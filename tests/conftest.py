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
