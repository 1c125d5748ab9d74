"""Issue 14, "the everyday CLI": export formats from the suffix, variants (no silent overwrite,
rm, mv), names looked up as `erase` stores them, quoted hints, confirmation without a TTY."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine.store import Store

runner = CliRunner()


def run(*args: str, input: str | None = None):
    return runner.invoke(app, list(args), input=input)


def fake_increments(store: Store, *concepts: str) -> None:
    """Small random increments on the toy base, saved as `erase` saves them (no training)."""
    import torch

    from sepme_engine.bases import get_base
    from sepme_engine.erase.increment import Increment
    from sepme_engine.increments import save_increment

    info = get_base(store, "toy")
    layers = dict(info.cross_attn_layers)
    d_in = next(iter(layers.values()))[1]
    for i, concept in enumerate(concepts):
        g = torch.Generator().manual_seed(i)
        basis = torch.linalg.qr(torch.randn(d_in, 2, generator=g))[0].T.contiguous()
        coefs = {n: torch.randn(s[0], 2, generator=g) * 1e-3 for n, s in layers.items()}
        save_increment(
            store,
            info,
            concept,
            Increment.factored(basis, coefs),
            prompt=concept,
            method="sepme",
            m_k=2,
            iterations=1,
            stop_reason="test",
            preserve_prompts=[""],
            settings={},
            stats={},
            activate=False,
        )


# ----- 3. export: the format from the suffix ----------------------------------------------------
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_export_refuses_to_write_a_pickle(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"x{suffix}"
    res = run("export", str(out))
    assert res.exit_code == 1
    assert "no pickles" in res.stderr and "x.safetensors" in res.stderr
    assert "Traceback" not in res.output
    assert not out.exists()  # today: a diffusers *folder* named x.ckpt


def test_export_refuses_a_suffix_that_contradicts_format(tmp_path: Path) -> None:
    out = tmp_path / "x.safetensors"
    res = run("export", str(out), "--format", "diffusers")
    assert res.exit_code == 1 and "--format diffusers writes a folder" in res.stderr
    assert not out.exists()
    res = run("export", str(tmp_path / "folder"), "--format", "ldm")
    assert res.exit_code == 1 and ".safetensors" in res.stderr


def test_guess_format_from_suffix() -> None:
    from sepme_engine.export.run import guess_format

    assert guess_format(Path("a.safetensors"), None) == "ldm"
    assert guess_format(Path("a.SafeTensors"), "lora") == "lora"
    assert guess_format(Path("out-dir"), None) == "diffusers"


# ----- 3. variants: no silent overwrite, rm, mv --------------------------------------------------
def test_compose_name_refuses_to_overwrite_a_variant(store: Store) -> None:
    fake_increments(store, "circle", "red")
    assert run("compose", "--erase", "circle", "--name", "v").exit_code == 0
    res = run("compose", "--erase", "red", "--name", "v")
    assert res.exit_code == 1 and "--force" in res.stderr
    # nothing changed: neither the variant nor the active set
    got = json.loads(run("variants", "--json").stdout)
    assert [(v["name"], v["active"]) for v in got] == [("v", ["circle"])]
    assert json.loads(run("compose", "--json").stdout)["active"] == ["circle"]
    res = run("compose", "--erase", "red", "--name", "v", "--force", "--json")
    assert res.exit_code == 0 and json.loads(res.stdout)["saved_as"] == "v"
    got = json.loads(run("variants", "list", "--json").stdout)
    assert [(v["name"], v["active"]) for v in got] == [("v", ["circle", "red"])]


def test_variants_mv_and_rm(store: Store) -> None:
    fake_increments(store, "circle", "red")
    run("compose", "--erase", "circle", "--name", "a")
    run("compose", "--erase", "red", "--name", "b")
    res = run("variants", "mv", "a", "b")
    assert res.exit_code == 1 and "--force" in res.stderr
    res = run("variants", "mv", "a", "c", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["name"] == "c"
    names = [v["name"] for v in json.loads(run("variants", "--json").stdout)]
    assert names == ["b", "c"]
    res = run("variants", "rm", "c", "--dry-run")
    assert res.exit_code == 0 and "would remove" in res.stdout
    res = run("variants", "rm", "c")  # no TTY, no --yes: refused, and says how
    assert res.exit_code == 1 and "--yes" in res.stderr
    res = run("variants", "rm", "c", "--yes")
    assert res.exit_code == 0, res.output
    assert [v["name"] for v in json.loads(run("variants", "--json").stdout)] == ["b"]
    res = run("variants", "rm", "x", "--yes")
    assert res.exit_code == 1 and "no variant 'x'" in res.stderr
    # the increments stay
    assert {i["concept"] for i in json.loads(run("list", "--json").stdout)} == {"circle", "red"}


# ----- 4. names ----------------------------------------------------------------------------------
def test_names_are_normalised_on_every_lookup(store: Store) -> None:
    fake_increments(store, "van-gogh", "red")
    res = run("show", "Van Gogh", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["concept"] == "van-gogh"
    res = run("compose", "--erase", "Red", "--json")
    assert res.exit_code == 0, res.output
    assert "red" in json.loads(res.stdout)["active"]
    res = run("compose", "--restore", "RED", "--json")
    assert res.exit_code == 0, res.output
    assert "red" not in json.loads(res.stdout)["active"]
    res = run("rm", "Van Gogh", "--yes")
    assert res.exit_code == 0, res.output
    assert [i["concept"] for i in json.loads(run("list", "--json").stdout)] == ["red"]


def test_did_you_mean_and_quoted_hints(store: Store) -> None:
    fake_increments(store, "van-gogh")
    res = run("show", "van-gog")
    assert res.exit_code == 1 and "did you mean van-gogh?" in res.stderr
    res = run("show", "Claude Monet")
    assert res.exit_code == 1
    # the hint's command erases one concept, not two
    cmd = res.stderr.split("`sepme erase ", 1)[1].split("`", 1)[0]
    assert shlex.split(cmd)[0] == "Claude Monet"
    res = run("generate", "x", "-o", "a.png", "--variant", "nope")
    assert res.exit_code == 1 and "no variant 'nope'" in res.stderr


def test_rm_without_a_tty_names_yes(store: Store) -> None:
    fake_increments(store, "circle")
    res = run("rm", "circle")
    assert res.exit_code == 1 and "--yes" in res.stderr
    res = run("rm", "circle", input="n\n")
    assert res.exit_code == 1 and "--yes" in res.stderr
    assert run("show", "circle").exit_code == 0  # still there
    res = run("rm", "circle", input="y\n")
    assert res.exit_code == 0
