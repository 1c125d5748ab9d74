"""Typed errors carry data; the CLI owns the words: no engine error's message or hint names a
command-line option or command, and the one-line message the CLI prints still names the option
to pass."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import sepme_engine
from sepme_cli._errors import next_step
from sepme_cli.app import app
from sepme_engine import errors as E
from sepme_engine.store import Store
from tests.test_cli_everyday import fake_increments

ENGINE = Path(sepme_engine.__file__).parent
runner = CliRunner()

# Errors that may name `--words` because they are not sepme's command line:
ALLOWED = {
    # the toy training script's own command line (`python -m sepme_engine.toy.train --out DIR`,
    # `--lr`, `--seed`), not a `sepme` command
    "toy/__init__.py",
    "toy/train.py",
    # the syntax of a concept list file (`CONCEPT --preserve "PROMPT"` a line), which the engine
    # parses itself: the file's words, whatever interface reads it
    "erase/batch.py",
}
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
ERRORS = {name for name, cls in vars(E).items() if isinstance(cls, type)}


def _commands() -> set[str]:
    """The `sepme` commands and groups, from the app itself."""
    commands = set(getattr(typer.main.get_command(app), "commands", {}))  # typer's own click
    assert {"erase", "export", "base"} <= commands, commands
    return commands


def _strings(node: ast.AST) -> str:
    return " ".join(
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    )


def _texts(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every message and hint given to an error: an error class's positional
    arguments (message, hint) and its `hint=`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        found += [(kw.value.lineno, _strings(kw.value)) for kw in node.keywords if kw.arg == "hint"]
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if name in ERRORS:
            found += [(a.lineno, _strings(a)) for a in node.args[:2]]
    return found


def _cli_words(text: str, commands: set[str]) -> list[str]:
    words = OPTION.findall(text)
    words += [m for m in re.findall(r"\bsepme ([a-z][a-z-]*)", text) if m in commands]
    return words


@pytest.mark.parametrize(
    "path", sorted(ENGINE.rglob("*.py")), ids=lambda p: str(p.relative_to(ENGINE))
)
def test_engine_errors_name_no_option_or_command(path: Path) -> None:
    rel = path.relative_to(ENGINE).as_posix()
    if rel in ALLOWED:
        return
    commands = _commands()
    bad = [(line, text) for line, text in _texts(path) if _cli_words(text, commands)]
    assert not bad, (
        f"{rel}: errors naming the CLI's options/commands {bad}: give the error a `kind` (and "
        "data) and put the words in sepme_cli/_errors.py NEXT_STEPS"
    )


def test_the_scan_can_fail(tmp_path: Path) -> None:
    commands = _commands()
    assert _cli_words("pass --allow-pickle if you trust it", commands) == ["--allow-pickle"]
    assert _cli_words("run sepme erase again", commands) == ["erase"]
    assert _cli_words("upgrade sepme (pip install -U sepme)", commands) == []
    assert _cli_words("sepme ships configs for SD 1.5", commands) == []
    module = tmp_path / "m.py"
    module.write_text(
        'raise InvalidInput("x", hint="use --device cpu")\nraise NotFound("y", "drop --format")\n',
        encoding="utf-8",
    )
    assert sorted(_texts(module)) == [
        (1, "use --device cpu"),
        (1, "x"),
        (2, "drop --format"),
        (2, "y"),
    ]


# ----- the CLI still names the option ---------------------------------------------------------
def _line(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    return lines[0]


def test_export_over_an_existing_file_names_force(tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"keep")
    line = _line("export", str(out))
    assert line.startswith("error (already exists): ")
    assert line.endswith("— choose another output path or pass --force to replace it")
    assert out.read_bytes() == b"keep"


def test_a_pickle_names_allow_pickle(tmp_path: Path) -> None:
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not read")
    line = _line("base", "add", "pk", str(ckpt))
    assert line.startswith("error (pickle refused): model.ckpt is a pickle checkpoint")
    assert "— convert it to .safetensors, or pass --allow-pickle if you trust it" in line


def test_cuda_on_a_machine_without_it_names_device(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _line("generate", "a red circle", "--device", "cuda", "-o", str(tmp_path / "x.png"))
    assert line.startswith("error (device unavailable): CUDA is not available")
    assert "— use --device cpu (or auto), or install a CUDA build of torch" in line


@pytest.mark.parametrize(
    ("args", "step"),
    [
        (
            ["erase", "circle", "--dtype", "fp16", "--device", "cpu"],
            "drop --dtype or pass --dtype fp32",
        ),
        (["erase", "!!!"], "give the concept a plain name and pass the text with --prompt"),
        (
            ["erase", "circle", "square", "--prompt", "x"],
            "erase them one call each, or drop --prompt",
        ),
        (
            ["erase", "circle", "--method", "uce", "--until-erased"],
            "drop --until-erased, or use --method sepme",
        ),
    ],
)
def test_erase_refusals_name_the_option(args: list[str], step: str) -> None:
    line = _line(*args)
    assert line.startswith("error (invalid input): ") and line.endswith(f"— {step}"), line


def test_more_refusals_name_the_option(tmp_path: Path, store: Store) -> None:
    fake_increments(store, "circle")
    png, st = str(tmp_path / "g.png"), str(tmp_path / "m.safetensors")
    cases = [
        (["export", st, "--rank", "4"], "drop --rank, or pass --format lora"),
        (["compose", "--erase", "circle", "--restore", "circle"], "in --erase or in --restore"),
        (["generate", "a red circle", "-o", png, "--plain", "--erase", "circle"], "or --plain"),
        (
            ["export", st, "--variant", "v", "--erase", "circle"],
            "give --variant or --erase, not both",
        ),
    ]
    for args, step in cases:
        line = _line(*args)
        assert line.startswith("error (invalid input): ") and line.endswith(step), line
        assert "--" not in line.split(" — ")[0], line  # the engine's message: no option


def test_a_failed_concept_of_a_list_names_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    """`erase --from-file` goes on after a failure; its progress line words the error's data."""
    from sepme_cli.erase import _with_list_lines
    from sepme_engine.erase.run import Event

    exc = E.InvalidInput("no such words", hint="force the training anyway", kind="unknown-words")
    _with_list_lines(None, 0, 1)(Event("failed", "cat", info=exc))
    said = " ".join(capsys.readouterr().err.split())
    assert said.startswith("cat: failed — no such words — use words the base knows")
    assert said.endswith("or pass --force to train anyway")


def test_an_error_keeps_its_data_through_pickle() -> None:
    """A launcher's processes send failed rows (with their error) to rank 0 by pickle."""
    import pickle

    from sepme_engine.erase.batch import ListRow
    from sepme_engine.errors import NotFound

    exc = NotFound("no base 'sd51'", "pick one", kind="base", name="sd51", candidates=["sd15"])
    row = pickle.loads(pickle.dumps(ListRow("cat", "failed", "", exc.message, error=exc)))
    back = row.error
    assert type(back) is NotFound and back.to_dict() == exc.to_dict()
    assert next_step(back) == next_step(exc) and "sd15" in (next_step(back) or "")
