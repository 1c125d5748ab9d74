"""End to end on a tiny model: erase, list/show, compose/restore, inspect, rm — real store on disk."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine import bases
from sepme_engine.compose import composition_deltas
from sepme_engine.store import Store
from tests._fixtures import save_diffusers, tiny

runner = CliRunner()
FAST = ["--steps", "12", "--images", "1", "--lr", "0.1", "--beta", "0.01"]


def run(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def tiny_base(tmp_path: Path, store: Store) -> str:
    folder = save_diffusers(tiny("sd1", max_length=8), tmp_path / "pipe")
    assert run("base", "add", "tiny", str(folder)).exit_code == 0
    assert run("base", "use", "tiny").exit_code == 0
    (store.root / "config.toml").write_text("[erase.sd1]\nimage_steps = 2\n", encoding="utf-8")
    return "tiny"


def test_erase_compose_restore_inspect(tiny_base: str, store: Store, tmp_path: Path) -> None:
    res = run("erase", "cat", "dog", *FAST, "--json")
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert [o["concept"] for o in report["outcomes"]] == ["cat", "dog"]
    assert report["active"] == ["cat", "dog"] and report["device"] == "cpu"
    for o in report["outcomes"]:
        assert o["iterations"] >= 1 and o["norm"] > 0 and o["m_k"] > 0
        assert o["unet_passes_training"] == 3 * o["iterations"]
        assert o["unet_passes_data"] == 1 * 2 * 2  # 1 image, 2 steps, 2 CFG branches

    shown = json.loads(run("show", "cat", "--json").stdout)
    assert shown["prompt"] == "cat" and shown["active"] is True
    assert shown["preserve_prompts"] == ["", "dog"]  # all-known: the other concept is preserved
    assert shown["settings"]["lr"] == 0.1 and shown["settings"]["method"] == "sepme"
    assert (
        shown["stats"]["device"] == "cpu"
        and shown["base_digest"] == bases.get_base(store, "tiny").base_digest
    )

    listed = json.loads(run("list", "--json").stdout)
    assert [(i["concept"], i["active"]) for i in listed] == [("cat", True), ("dog", True)]

    # sequential scenario: a later concept preserves the earlier ones
    res = run("erase", "bird", *FAST, "--no-apply")
    assert res.exit_code == 0, res.output
    assert json.loads(run("show", "bird", "--json").stdout)["preserve_prompts"] == [
        "",
        "cat",
        "dog",
    ]
    assert json.loads(run("list", "--json").stdout)[0]["active"] is False

    # restore is exact: {cat, dog} then restore dog == {cat}
    info = bases.get_base(store, "tiny")
    res = run("compose", "--restore", "dog", "--json")
    assert json.loads(res.stdout)["active"] == ["cat"]
    d_cat = composition_deltas(store, info, ["cat"])
    d_after = composition_deltas(store, info, json.loads(res.stdout)["active"])
    assert all(torch.equal(d_cat[k], d_after[k]) for k in d_cat)
    pipe = bases.load_base(store, "tiny")
    from sepme_engine.delta.hooks import apply_deltas_inplace

    with apply_deltas_inplace(pipe.unet, composition_deltas(store, info, ["cat", "dog"])):
        pass
    with apply_deltas_inplace(pipe.unet, d_after):
        w1 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with apply_deltas_inplace(pipe.unet, composition_deltas(store, info, ["cat"])):
        w2 = pipe.unet.state_dict()
        assert all(torch.equal(w1[k], w2[k]) for k in w1)

    res = run("compose", "--erase", "dog,bird", "--name", "all3", "--json")
    assert json.loads(res.stdout) == {
        "base": "tiny",
        "active": ["bird", "cat", "dog"],
        "added": ["bird", "dog"],
        "removed": [],
        "saved_as": "all3",
    }
    assert json.loads(run("variants", "--json").stdout)[0]["active"] == ["bird", "cat", "dog"]
    res = run("compose", "--from", "all3", "--restore", "bird", "--json")
    assert json.loads(res.stdout)["active"] == ["cat", "dog"]
    res = run("compose", "--restore", "bird")
    assert res.exit_code == 1 and "not erased" in res.stderr
    res = run("compose", "--erase", "unicorn")
    assert res.exit_code == 1 and "no increment 'unicorn'" in res.stderr

    plot = tmp_path / "heat.png"
    res = run("inspect", "--json", "--plot", str(plot), "--layers")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["concepts"] == ["bird", "cat", "dog"]
    R = data["residual"]
    # increments are decoupled from the concepts in their E_k: bird preserves cat and dog,
    # cat preserves dog, dog preserves cat
    # Bound: ΔW·e(c_j) is 0 exactly; the float32 basis leaves ≤ γ_32·‖ΔW‖‖e‖ ≈ 2e-6·‖ΔW‖‖e‖,
    # and ‖ΔW‖ ≪ ‖W‖, so R ≪ 1e-5 — while R on the own concept is > 1e-4 (next line).
    assert R[0][1] < 1e-5 and R[0][2] < 1e-5 and R[1][2] < 1e-5 and R[2][1] < 1e-5
    assert R[1][1] > 1e-4 and R[2][2] > 1e-4  # and they do change their own concept
    assert abs(data["correlation"][1][1] - 1) < 1e-9  # float64 cosine: n·eps64 ≈ 1e-11
    assert len(data["increments"][0]["layers"]) == 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = run("erase", "cat", *FAST)
    assert res.exit_code == 1 and "--force" in res.stderr
    assert run("rm", "dog", "--dry-run").exit_code == 0 and store.has_manifest(
        "increments", "tiny/dog"
    )
    assert run("rm", "dog", "-y").exit_code == 0
    assert json.loads(run("compose", "--json").stdout)["active"] == ["cat"]


def test_erase_bad_input_leaves_store_unchanged(tiny_base: str, store: Store) -> None:
    before = sorted(p.name for p in store.blobs_dir.iterdir())
    res = run("erase", "a very long prompt that does not fit", *FAST)
    assert res.exit_code == 1 and "tokens" in res.stderr
    res = run("erase", "   ", *FAST)
    assert res.exit_code == 1 and "empty" in res.stderr
    res = run("erase", "cat", "--base", "nope", *FAST)
    assert res.exit_code == 1 and "sepme base add nope" in res.stderr
    res = run("erase", "cat", "--device", "cuda", *FAST)
    assert res.exit_code == 1 and "CUDA" in res.stderr
    res = run("erase", "cat", "--method", "magic", *FAST)  # a choice of the registered methods
    assert res.exit_code == 2 and "'magic' is not one of" in res.stderr and "esd-x" in res.stderr
    assert sorted(p.name for p in store.blobs_dir.iterdir()) == before
    assert not store.list_manifests("increments")


def test_profile_default_preserve_prompts_and_opting_out(tiny_base: str, store: Store) -> None:
    (store.root / "config.toml").write_text(
        '[erase.sd1]\nimage_steps = 2\npreserve = ["dog", "a cat", "tree"]\n', encoding="utf-8"
    )
    res = run("erase", "cat", *FAST, "--preserve", "bird", "--no-apply")
    assert res.exit_code == 0, res.output
    # "a cat" names the concept itself, so it is not preserved; the rest are, sorted
    shown = json.loads(run("show", "cat", "--json").stdout)
    assert shown["preserve_prompts"] == ["", "bird", "dog", "tree"]
    res = run("erase", "cat", *FAST, "--no-default-preserve", "--force")
    assert res.exit_code == 0, res.output
    assert json.loads(run("show", "cat", "--json").stdout)["preserve_prompts"] == [""]
    (store.root / "config.toml").write_text(
        '[erase.sd1]\npreserve = ["a prompt far too long for this tokenizer"]\n', encoding="utf-8"
    )
    res = run("erase", "dog", *FAST)
    assert res.exit_code == 1 and "tokens" in res.stderr
    assert not store.has_manifest("increments", "tiny/dog")


def test_diverging_training_stores_nothing(tiny_base: str, store: Store) -> None:
    from sepme_engine.erase.run import erase
    from sepme_engine.errors import TrainingDiverged

    # the CLI refuses such settings (out of range); the engine's divergence guard still holds
    res = run("erase", "cat", "--steps", "30", "--images", "1", "--lr", "1e30", "--beta", "1e30")
    assert res.exit_code == 2 and "lr must be in" in res.stderr
    overrides = {"steps": 30, "images": 1, "lr": 1e30, "beta": 1e30}
    with pytest.raises(TrainingDiverged, match="non-finite"):
        erase(store, ["cat"], base=tiny_base, overrides=overrides)
    assert not store.list_manifests("increments")
    assert not any(store.tmp_dir.iterdir())


@pytest.mark.parametrize("method", ["esd-x", "fmn", "uce"])
def test_baseline_methods_store_increments(tiny_base: str, method: str) -> None:
    # UCE is a closed form: it takes none of these options (refused since the registry)
    options = [] if method == "uce" else ["--steps", "3", "--images", "1", "--lr", "1e-3"]
    res = run("erase", "cat", "--method", method, *options, "--json")
    assert res.exit_code == 0, res.output
    o = json.loads(res.stdout)["outcomes"][0]
    assert o["method"] == method and o["norm"] > 0
    assert json.loads(run("show", "cat", "--json").stdout)["method"] == method


def test_closed_form_method_and_the_verdict(tiny_base: str, store: Store) -> None:
    res = run("erase", "cat", "--method", "sepme-cf", "--json")
    assert res.exit_code == 0, res.output
    o = json.loads(res.stdout)["outcomes"][0]
    assert o["method"] == "sepme-cf" and o["iterations"] == 0 and o["stop_reason"] == "closed-form"
    assert o["unet_passes_data"] == 0 and o["unet_passes_training"] == 0
    assert o["verdict"] in ("erased", "weakened", "not erased")
    assert isinstance(o["correlation"], float) and o["unet_passes_verdict"] == 3 * 16
    assert (o["verdict"] == "erased") == (o["advice"] == "")
    assert o["advice"] in ("", "use-sepme") and o["repeatable"] is False  # closed form: no rounds
    shown = json.loads(run("show", "cat", "--json").stdout)
    assert shown["preserve_prompts"] == [""] and shown["stats"]["verdict"]["status"] == o["verdict"]
    # the table names the verdict and its evidence
    res = run("erase", "dog", "--method", "sepme-cf")
    assert res.exit_code == 0, res.output
    assert "verdict" in res.stdout and "ρ" in res.stdout
    # --until-erased retrains SepME only
    res = run("erase", "bird", "--method", "uce", "--until-erased")
    assert res.exit_code == 1 and "--until-erased" in res.stderr
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_until_erased_trains_again_with_a_lower_tau(tiny_base: str, store: Store) -> None:
    # a 12-iteration cap and a tiny learning rate: not erased after the first run
    (store.root / "config.toml").write_text(
        "[erase.sd1]\nimage_steps = 2\nuntil_rounds = 2\n", encoding="utf-8"
    )
    args = ["--steps", "12", "--images", "1", "--lr", "1e-6", "--beta", "1e-6", "--init", "zero"]
    res = run("erase", "cat", *args, "--until-erased", "--json")
    assert res.exit_code == 0, res.output
    o = json.loads(res.stdout)["outcomes"][0]
    assert o["verdict"] == "not erased"
    assert o["rounds"] == 3  # the first training and the 2 allowed more
    assert o["stop_reason"] == "cap" and o["iterations"] == 48  # the cap doubled twice
    # the advice is data; the CLI words it with the numbers
    assert (o["advice"], o["suggested_steps"], o["repeatable"]) == ("raise-steps", 96, True)
    res = run("erase", "dog", *args, "--until-erased")
    assert res.exit_code == 0
    assert "training again" in res.stderr
    assert (
        "dog: not erased — next: raise --steps (the run reached its iteration cap; e.g. --steps "
        "96), or --until-erased" in " ".join(res.stderr.split())
    )


def test_the_advice_in_the_cli_words() -> None:
    from sepme_cli.erase import advice_words
    from sepme_engine.erase.run import ConceptOutcome
    from sepme_engine.erase.verdict import ADVICE

    o = ConceptOutcome("cat", "cat", "sepme", 12, "cap", 1.0, None, None, None, 0, 0, False, 1.0)
    words = {
        a: advice_words(replace(o, advice=a, suggested_steps=24, suggested_tau=-2e-4))
        for a in ADVICE
    }
    assert (
        words["raise-steps"] == "raise --steps (the run reached its iteration cap; e.g. --steps 24)"
    )
    assert words["use-sepme"] == "use --method sepme (closed form + G-CiRs iterations)"
    assert words["lower-tau"] == "rerun with a lower --tau (e.g. --tau=-2.0e-04)"
    again = replace(o, advice="lower-tau", repeatable=True)
    assert advice_words(again) == "rerun with --until-erased, or a lower --tau"
    assert advice_words(replace(again, advice="raise-steps")).endswith(", or --until-erased")


def test_progress_line_fits_80_columns() -> None:
    from sepme_cli.erase import _short, step_stats

    worst = step_stats(9999, -1.2345e-3, -1e-3, 123.4)
    assert len(worst) <= 44 and "<" in worst and "τ -1e-03" in worst
    assert "≥" in step_stats(3, 2e-3, -1e-3, 1.0)
    name = _short("a very long concept name indeed")
    assert len(name) == 14
    # description + bar (10) + stats, with the columns' single spaces
    assert len(f"{name}: erasing") + 1 + 10 + 1 + len(worst) <= 80


@pytest.mark.parametrize(
    "method, option, value, takes",
    [
        ("esd-x", "--tau", "5", "--steps, --lr, --seed, --images"),
        ("fmn", "--beta", "0.1", "--steps, --lr, --seed, --images"),
        ("uce", "--steps", "3", "none of these options"),
        ("sepme-cf", "--lr", "0.1", "--anchor"),
    ],
)
def test_options_a_method_does_not_take_are_refused(
    tiny_base: str, store: Store, method: str, option: str, value: str, takes: str
) -> None:
    """Before: `--method esd-x --tau 5` trained ESD-x and ignored τ without a word."""
    res = run("erase", "cat", "--method", method, option, value)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output
    assert f"{option} does not apply to --method {method}" in lines[0]
    assert f"{method} takes {takes}" in lines[0]
    assert not store.list_manifests("increments")


def test_the_engine_refuses_them_too(tiny_base: str, store: Store) -> None:
    from sepme_engine.erase.run import erase
    from sepme_engine.errors import InvalidInput

    with pytest.raises(InvalidInput, match="^tau, lam do not apply to method esd-x$") as refused:
        erase(store, ["cat"], method="esd-x", overrides={"tau": 5.0, "lam": 1.0, "steps": None})
    assert (refused.value.kind, refused.value.name) == ("not-for-method", "esd-x")
    with pytest.raises(InvalidInput, match="unknown method 'magic'.*"):
        erase(store, ["cat"], method="magic")
    assert not store.list_manifests("increments")


def test_a_baseline_takes_its_settings_from_config_toml_and_the_command_line(
    tiny_base: str, store: Store
) -> None:
    """Before: ESD-x read only --steps/--lr/--seed, never config.toml; UCE ignored everything."""
    (store.root / "config.toml").write_text(
        "[erase.sd1]\nimage_steps = 2\nimages = 1\n"
        "[erase.esd-x]\nsteps = 4\nlr = 0.002\neta = 0.5\n"
        "[erase.esd-x.sd1]\nsteps = 3\nbatch_size = 2\n"
        '[erase.uce]\nridge = 0.5\npositions = "concept"\n',
        encoding="utf-8",
    )
    res = run("erase", "cat", "--method", "esd-x", "--seed", "4", "--no-verify")
    assert res.exit_code == 0, res.output
    got = json.loads(run("show", "cat", "--json").stdout)
    assert got["iterations"] == 3  # [erase.esd-x.sd1] wins over [erase.esd-x]
    want = {"steps": 3, "lr": 0.002, "eta": 0.5, "batch_size": 2, "seed": 4, "images": 1}
    assert {k: got["settings"][k] for k in want} == want
    assert got["settings"]["image_steps"] == 2  # the profile's training images
    res = run("erase", "dog", "--method", "uce", "--no-verify")
    assert res.exit_code == 0, res.output
    got = json.loads(run("show", "dog", "--json").stdout)["settings"]
    assert (got["ridge"], got["positions"], got["method"]) == (0.5, "concept", "uce")


@pytest.mark.parametrize(
    "table, match",
    [
        ("[erase.esd-x]\ntau = 5.0\n", r"config.toml:2: 'tau' is not a setting of esd-x"),
        ("[erase.uce.sd1]\nsteps = 3\n", r"config.toml:2: 'steps' is not a setting of uce"),
        ('[erase.esd-x]\neta = "big"\n', r"config.toml:2: eta must be float"),
        ('[erase.uce]\npositions = "some"\n', r"positions must be 'all' or 'concept'"),
        ("[erase.sepme.sd1]\nsteps = 0\n", r"config.toml:2: steps must be in \[1"),
    ],
)
def test_config_keys_a_method_does_not_know_are_refused(
    tiny_base: str, store: Store, table: str, match: str
) -> None:
    import re

    method = table.split(".")[1].split("]")[0]
    (store.root / "config.toml").write_text(table, encoding="utf-8")
    res = run(
        "erase",
        "cat",
        "--method",
        method,
        "--no-verify",
        *(["--steps", "2"] if method == "sepme" else []),
    )
    assert res.exit_code == 1, res.output
    assert re.search(match, res.stderr), res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not store.list_manifests("increments")
