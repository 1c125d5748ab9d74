"""≥ 40 bad inputs, table-driven (tests/faults/harness.py): each exits ≠ 0 with one line on
stderr and no traceback, changes nothing in the store, touches nothing outside it, and never
runs a pickle's payload."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepme_cli.app import app
from tests.faults.harness import BAD_INPUTS, Case, judge, prepare, snapshot

runner = CliRunner()


def test_the_table_is_big_enough() -> None:
    assert len(BAD_INPUTS) >= 40
    assert len({c.id for c in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.id)
def test_bad_input(case: Case, template: Path, tmp_path: Path) -> None:
    ctx, args = prepare(case, template, tmp_path / "work")
    store_before, outside_before = snapshot(ctx.root), snapshot(ctx.outside)
    res = runner.invoke(app, args, env=ctx.env)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception  # a traceback: show it
    wrong = judge(ctx, res.exit_code, res.stdout, res.stderr, store_before, outside_before)
    assert not wrong, f"{case.id}: {wrong}\nstdout: {res.stdout}\nstderr: {res.stderr}"
