"""CLI behaviour that needs no model: fast start, errors, store and config commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepme_cli._errors import BROKEN_PIPE_EXIT
from sepme_cli.app import app
from sepme_engine.store import Store
from tests.test_cli_everyday import fake_increments

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["base", "list"],
        ["base", "list", "--json"],
        ["list", "--help"],
        ["erase", "--help"],
        ["config", "show"],
    ],
)
def test_fast_paths_do_not_import_torch(argv: list[str], sepme_home: Path) -> None:
    code = (
        "import sys\n"
        "from sepme_cli.app import app\n"
        "try:\n"
        f"    app({argv!r}, prog_name='sepme')\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert "HEAVY=\n" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]


def test_completion_does_not_import_torch() -> None:
    env = {
        "_SEPME_COMPLETE": "complete_bash",
        "COMP_WORDS": "sepme ba",
        "COMP_CWORD": "1",
        "PATH": "",
    }
    code = "import sys, runpy\ntry:\n    from sepme_cli.app import main; main()\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules, file=sys.stderr)"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    assert "base" in proc.stdout
    assert proc.stderr.strip().endswith("False")


def test_generated_files_are_fresh() -> None:
    proc = subprocess.run(
        [sys.executable, "scripts/gen_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def test_store_path_honours_sepme_home(sepme_home: Path) -> None:
    res = run("store", "path")
    assert res.exit_code == 0 and res.stdout.strip() == str(sepme_home)


def test_unknown_base_names_the_command_to_run() -> None:
    res = run("base", "show", "sd15")
    assert res.exit_code == 1
    assert "no base 'sd15'" in res.stderr and "sepme base add sd15" in res.stderr
    assert "Traceback" not in res.output


def test_bad_name_is_one_line_with_suggestion() -> None:
    res = run("base", "add", "My Model", "/nowhere")
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'my-model'" in lines[0]


def test_malformed_config_is_reported_with_file_and_line(sepme_home: Path) -> None:
    sepme_home.mkdir(parents=True)
    (sepme_home / "config.toml").write_text('device = "cpu"\n[erase]\nlr = \n', encoding="utf-8")
    res = run("config", "show")
    assert res.exit_code == 1
    assert "config.toml" in res.stderr and "line 3" in res.stderr


def test_config_show_json(sepme_home: Path) -> None:
    sepme_home.mkdir(parents=True)
    (sepme_home / "config.toml").write_text('device = "cpu"\n', encoding="utf-8")
    res = run("config", "show", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["settings"]["device"] == {
        "value": "cpu",
        "source": f"{sepme_home / 'config.toml'}:1",
    }
    assert data["settings"]["erase.sd1.lr"]["source"] == "default"


def test_newer_schema_is_refused(sepme_home: Path) -> None:
    path = sepme_home / "manifests" / "bases" / "future.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"schema_version": 99, "name": "future"}), encoding="utf-8")
    res = run("base", "show", "future")
    assert res.exit_code == 1 and "newer sepme" in res.stderr and "upgrade" in res.stderr


def test_store_verify_and_prune_cli(sepme_home: Path) -> None:
    from sepme_engine.store import Store

    store = Store(sepme_home)
    store.ensure()
    orphan = store.put_blob_bytes(b"orphan")
    (store.tmp_dir / "x.incomplete").write_bytes(b"half")
    res = run("store", "verify", "--json")
    assert res.exit_code == 1
    assert [p["kind"] for p in json.loads(res.stdout)["problems"]] == ["leftover"]
    res = run("store", "prune", "--dry-run")
    assert (
        res.exit_code == 0
        and "would remove 2 item(s)" in res.stdout
        and store.blob_path(orphan).exists()
    )
    res = run("store", "prune", "--json")
    assert json.loads(res.stdout)["dry_run"] is False and not store.blob_path(orphan).exists()
    assert run("store", "verify").exit_code == 0


def test_debug_env_reraises(monkeypatch: pytest.MonkeyPatch) -> None:
    from sepme_engine.errors import NotFound

    monkeypatch.setenv("SEPME_DEBUG", "1")
    res = run("base", "show", "nope")
    assert isinstance(res.exception, NotFound)


# ----- a reader that stops early (`sepme list | head -1`) --------------------------------------
def _sepme_into_closed_pipe(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    """Run the CLI (its `main`) with a stdout whose reader has already gone: every write to it
    fails with EPIPE, deterministically."""
    r, w = os.pipe()
    os.close(r)
    argv = (
        [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "sepme_cli", *args]
    )
    try:
        return subprocess.run(
            argv, stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT, timeout=300
        )
    finally:
        os.close(w)


@pytest.mark.parametrize(
    "argv", [["list"], ["list", "--json"], ["--help"], ["--version"], ["base", "list"]]
)
def test_a_closed_stdout_exits_quietly(argv: list[str], store: Store) -> None:
    fake_increments(store, "circle", "square")
    proc = _sepme_into_closed_pipe(*argv)
    assert proc.stderr == ""  # no traceback, no "error (I/O EPIPE)" line
    assert proc.returncode == BROKEN_PIPE_EXIT


def test_a_broken_pipe_inside_a_command_exits_quietly(sepme_home: Path) -> None:
    """A write that is not rich's (which handles its own) fails inside a command."""
    code = (
        "import sys\n"
        "from sepme_cli.app import app, main\n"
        "@app.command('pipe-test')\n"
        "def _pipe_test() -> None:\n"
        "    sys.stdout.write('x' * 100000)\n"
        "    sys.stdout.flush()\n"
        "sys.argv = ['sepme', 'pipe-test']\n"
        "main()\n"
    )
    proc = _sepme_into_closed_pipe(code=code)
    assert (proc.returncode, proc.stderr) == (BROKEN_PIPE_EXIT, "")


def test_a_reader_of_one_line(store: Store) -> None:
    """The everyday case: `sepme list --json | head -1` with more output than a pipe holds."""
    fake_increments(store, *[f"c{i}" for i in range(40)])
    sepme = subprocess.Popen(
        [sys.executable, "-m", "sepme_cli", "list", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert sepme.stdout is not None and sepme.stderr is not None
    reader = subprocess.run(
        [sys.executable, "-c", "import sys; print(sys.stdin.readline().strip())"],
        stdin=sepme.stdout,
        capture_output=True,
        text=True,
        timeout=300,
    )
    sepme.stdout.close()  # the reader's end is the only one left open
    stderr = sepme.stderr.read().decode()
    sepme.stderr.close()
    assert sepme.wait(timeout=300) in (0, BROKEN_PIPE_EXIT)  # 0 if it all fit before the close
    assert reader.stdout == "[\n" and stderr == ""
