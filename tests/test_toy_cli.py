"""The shipped toy base through the CLI: listed with no set-up, generate, erase, compare."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine.store import Store
from sepme_engine.toy import CONCEPTS

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args))


def test_toy_is_listed_in_an_empty_store(store: Store) -> None:
    res = run("base", "list", "--json")
    assert res.exit_code == 0
    toy = next(b for b in json.loads(res.stdout) if b["name"] == "toy")
    assert toy["source_type"] == "builtin" and toy["is_default"] is True
    assert toy["profile"] == "toy" and toy["arch"] == "sd1" and toy["text_width"] == 128
    assert toy["base_digest"].startswith("sha256:") and len(toy["cross_attn_layers"]) > 0
    assert not store.list_manifests("bases")  # nothing was written to have it
    res = run("base", "rm", "toy", "-y")
    assert res.exit_code == 1 and "built-in" in res.stderr


def test_generate_grid_and_compare_after_erase(tmp_path: Path, store: Store) -> None:
    out = tmp_path / "grid.png"
    res = run(
        "generate",
        "a red circle on stripes",
        "a blue square",
        "-o",
        str(out),
        "--n",
        "2",
        "--steps",
        "4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert rep["erased"] == [] and rep["steps"] == 4
    w, h = Image.open(out).size
    assert w > 2 * 32 and h > 2 * 32  # two rows of two 32x32 images plus labels

    res = run("erase", "circle", "--steps", "15", "--json")
    assert res.exit_code == 0, res.output
    assert "τ -1e-03" in res.stderr  # the progress shows the toy profile's effective τ
    o = json.loads(res.stdout)["outcomes"][0]
    assert o["unet_passes_data"] == 4 * 10 * 2  # the toy profile: 4 images, 10 steps, CFG
    shown = json.loads(run("show", "circle", "--json").stdout)
    assert shown["settings"]["beta"] == 0.01
    # the toy profile preserves the other toy concepts by default: E_k = blank + the other 12
    assert shown["preserve_prompts"] == ["", *sorted(c for c in CONCEPTS if c != "circle")]

    cmp_out = tmp_path / "cmp.png"
    res = run(
        "generate",
        "a red circle on stripes",
        "--compare",
        "-o",
        str(cmp_out),
        "--n",
        "2",
        "--steps",
        "4",
        "--json",
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["erased"] == ["circle"]
    w2, h2 = Image.open(cmp_out).size
    assert h2 > h / 2 * 1.5  # base row + erased row

    # same seeds: the base rows of the plain and the compare grid are the same pixels
    res = run(
        "generate",
        "a red circle on stripes",
        "--plain",
        "-o",
        str(tmp_path / "p.png"),
        "--n",
        "2",
        "--steps",
        "4",
    )
    assert res.exit_code == 0

    res = run("generate", "x", "-o", str(tmp_path / "bad.txt"))
    assert res.exit_code == 1 and ".png" in res.stderr


def test_eval_refuses_a_base_outside_the_toy_world(tmp_path: Path) -> None:
    from tests._fixtures import save_diffusers, tiny

    folder = save_diffusers(tiny("sd1"), tmp_path / "pipe")
    assert run("base", "add", "tiny", str(folder)).exit_code == 0
    res = run("eval", "--base", "tiny")
    assert res.exit_code == 1 and "only applies to the toy world" in res.stderr
