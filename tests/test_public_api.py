"""The surface: the public Python API, typed errors that carry data (the CLI owns the words),
one JSON convention (`to_dict()` on every result, printed as is by `--json`)."""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sepme_engine
from sepme_cli import _errors
from sepme_cli.app import app
from sepme_engine import errors as E
from sepme_engine.store import Store
from tests.test_cli_everyday import fake_increments

ENGINE = Path(sepme_engine.__file__).parent
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


# ----- the public API --------------------------------------------------------------------------
def test_every_public_name_resolves() -> None:
    for name in sepme_engine.__all__:
        value = getattr(sepme_engine, name)
        assert value is not None, name
        if name[0].islower() and name != "__version__":
            assert callable(value), name
    assert sepme_engine.compose_concepts.__module__ == "sepme_engine.compose"
    assert sepme_engine.erase_concepts.__name__ == "erase"
    assert issubclass(sepme_engine.NotFound, sepme_engine.SepmeError)
    # a module of the same name stays reachable as a module
    importlib.import_module("sepme_engine.compose")
    assert inspect.ismodule(sepme_engine.compose)
    with pytest.raises(AttributeError):
        _ = sepme_engine.no_such_name  # type: ignore[attr-defined]


def test_importing_the_api_stays_torch_free() -> None:
    code = (
        "import sys, sepme_engine as s; s.Store; s.list_bases; s.get_base; s.NotFound; "
        "s.list_increments; s.list_variants; s.verify_store; s.load_config; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def test_the_package_is_marked_typed() -> None:
    assert (ENGINE / "py.typed").is_file()
    pyproject = (ENGINE.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert '"py.typed"' in pyproject.split("[tool.setuptools.package-data]", 1)[1]


# ----- errors: data in the engine, words in the CLI ---------------------------------------------
def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


@pytest.mark.parametrize(
    "path", sorted(ENGINE.rglob("*.py")), ids=lambda p: str(p.relative_to(ENGINE))
)
def test_engine_strings_name_no_cli_command(path: Path) -> None:
    """A command line ("run `sepme base add …`") is the CLI's to write: the engine raises data."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = _docstrings(tree)
    bad = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docs
        and "`sepme " in node.value
    ]
    # config.py's key descriptions are the help text of `sepme config show` (documentation)
    if path.name == "config.py":
        bad = [b for b in bad if "chose one" not in b]
    assert not bad, f"{path.relative_to(ENGINE)}: {bad}"


@pytest.mark.parametrize("key", sorted(_errors.NEXT_STEPS, key=lambda k: (k[0].__name__, k[1])))
def test_every_next_step_quotes_names_as_shell_words(key: tuple[type[E.SepmeError], str]) -> None:
    cls, kind = key
    exc = cls("what went wrong", kind=kind, name="Claude Monet", base="my base", path="/x")
    line = _errors.format_error(exc)
    assert line.startswith("error (") and "what went wrong — " in line
    step = line.split(" — ", 1)[1]
    # every entry is there to name a command or an option: words only the CLI can say
    assert "`sepme " in step or re.search(r"(?<![\w-])--?[a-z]", step), step
    # a name with a space is one shell word in every command the step shows
    for cmd in step.split("`")[1::2]:
        words = shlex.split(cmd)
        for value in ("Claude Monet", "my base"):
            assert value in words or value not in cmd, cmd


def test_the_engine_error_carries_the_data() -> None:
    from sepme_engine.bases import not_found_base

    exc = not_found_base("sd15x", ["sd15", "toy"])
    assert (exc.kind, exc.name, exc.candidates) == ("base", "sd15x", ("sd15",))
    assert "sepme" not in exc.message and exc.hint is None
    assert json.loads(json.dumps(exc.to_dict()))["candidates"] == ["sd15"]
    line = _errors.format_error(exc)
    assert line == (
        "error (not found): no base 'sd15x' in the store — did you mean sd15? add one with "
        "`sepme base add sd15x PATH`; `sepme base list` shows the bases you have"
    )


def test_cli_words_for_engine_errors(store: Store) -> None:
    fake_increments(store, "circle")
    res = run("show", "square")
    assert res.exit_code == 1
    assert "no increment 'square' on base 'toy'" in res.stderr
    assert "`sepme list --base toy` shows them; create it with `sepme erase square --base toy`" in (
        res.stderr
    )
    res = run("variants", "rm", "nope", "-y")
    assert res.exit_code == 1
    assert "`sepme variants --base toy` lists them" in res.stderr
    assert run("compose", "--erase", "circle", "--name", "v").exit_code == 0
    res = run("compose", "--erase", "circle", "--name", "v")
    assert res.exit_code == 1
    assert "(`sepme variants rm v --base toy` removes it)" in res.stderr
    # an unreadable manifest: the store's next step
    store.manifest_path("increments", "toy/circle").write_text("{", encoding="utf-8")
    res = run("show", "circle")
    assert res.exit_code == 1 and "error (corrupt)" in res.stderr
    assert "— run `sepme store verify`; remove the entry and create it again" in res.stderr
    assert "Traceback" not in res.output


def test_an_error_without_cli_words_keeps_the_engine_hint() -> None:
    exc = E.InvalidInput("rank must be at least 1", hint="pass a rank of 4 or more")
    assert _errors.format_error(exc) == (
        "error (invalid input): rank must be at least 1 — pass a rank of 4 or more"
    )


# ----- one JSON convention -----------------------------------------------------------------------
def test_every_json_output_is_a_results_to_dict(store: Store) -> None:
    """`--json` prints `to_dict()` with no `default=str` to hide a value JSON cannot hold."""
    from sepme_engine.bases import list_bases
    from sepme_engine.config import load_config
    from sepme_engine.increments import get_increment, list_increments
    from sepme_engine.store.maintenance import prune, verify

    fake_increments(store, "circle", "square")
    cases = [
        (["base", "list", "--json"], [i.to_dict() for i in list_bases(store)]),
        (["list", "--json"], [i.to_dict() for i in list_increments(store, "toy")]),
        (["show", "circle", "--json"], get_increment(store, "toy", "circle").to_dict()),
        (["config", "show", "--json"], load_config(store.root).to_dict()),
        (["store", "prune", "--dry-run", "--json"], prune(store, dry_run=True).to_dict()),
    ]
    for args, expected in cases:
        res = run(*args)
        assert res.exit_code == 0, (args, res.output)
        assert json.loads(res.stdout) == json.loads(json.dumps(expected)), args
    res = run("store", "verify", "--json")
    data = json.loads(res.stdout)
    assert data == verify(store).to_dict()
    assert set(data) == {"root", "ok", "blobs_checked", "manifests_checked", "problems"}
    res = run("compose", "--erase", "circle", "--name", "v", "--json")
    assert json.loads(res.stdout) == {
        "base": "toy",
        "active": ["circle"],
        "added": ["circle"],
        "removed": [],
        "saved_as": "v",
    }
    variants = json.loads(run("variants", "--json").stdout)
    assert [v["name"] for v in variants] == ["v"] and variants[0]["active"] == ["circle"]


def test_print_json_refuses_what_json_cannot_hold() -> None:
    from sepme_cli._render import print_json

    with pytest.raises(TypeError):
        print_json({"path": Path("/x")})
