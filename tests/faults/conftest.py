from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.harness import build_template


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The template store (toy + `circle`, variant `v1`, base `b1`), built once per session."""
    return build_template(tmp_path_factory.mktemp("template") / "home")
