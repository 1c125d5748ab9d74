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
    from sepme_engine.delta.increment import Increment
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
    assert res.exit_code == 1 and "drop --format for a single file" in res.stderr
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
    res = run("list", "--base", "tyo")
    assert res.exit_code == 1 and "did you mean toy?" in res.stderr
    res = run("list", "--base", "my base")
    assert res.exit_code == 1 and "`sepme base add 'my base' PATH`" in res.stderr
    assert run("list", "--base", "Toy").exit_code == 0


def test_rm_without_a_tty_names_yes(store: Store) -> None:
    fake_increments(store, "circle")
    res = run("rm", "circle")
    assert res.exit_code == 1 and "--yes" in res.stderr
    res = run("rm", "circle", input="n\n")
    assert res.exit_code == 1 and "--yes" in res.stderr
    assert run("show", "circle").exit_code == 0  # still there
    res = run("rm", "circle", input="y\n")
    assert res.exit_code == 0


# ----- 2. counted progress -----------------------------------------------------------------------
def test_counted_bar_fits_80_columns_with_count_rate_and_eta() -> None:
    import io

    from rich.console import Console
    from rich.progress import Progress

    from sepme_cli._render import progress_columns

    clock = [0.0]
    console = Console(file=io.StringIO(), width=80, force_terminal=True, color_system=None)
    bar = Progress(*progress_columns("img"), console=console, get_time=lambda: clock[0])
    task = bar.add_task("sampling and judging", total=744)
    for done in range(0, 124, 4):  # 2 images a second
        clock[0] = done / 2
        bar.update(task, completed=done)
    console.print(bar.make_tasks_table(bar.tasks))
    line = console.file.getvalue().strip()
    assert "…" not in line and len(line) <= 80
    assert "sampling and judging" in line and "120/744" in line and "2.0 img/s" in line
    assert "0:05:12" in line  # (744 − 120) / 2 s, from the measured rate


def test_generate_progress_counts_every_image(store: Store, tmp_path: Path) -> None:
    from sepme_engine.generate import generate

    fake_increments(store, "circle")
    seen: list[tuple[float, int]] = []
    rep = generate(
        store,
        ["a red circle", "blue"],
        tmp_path / "g.png",
        n=2,
        steps=3,
        compare=True,
        erase=["circle"],
        progress=lambda done, total: seen.append((done, total)),
    )
    assert rep.compare and (tmp_path / "g.png").is_file()
    assert {t for _, t in seen} == {8}  # 2 prompts × 2 images × (base + composition)
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and dones[0] == 0 and dones[-1] == pytest.approx(8)
    assert len(seen) == 1 + 4 * 3  # one update per denoising step of each of the 4 batches
    # PNGs are written like exports: readable by everyone (umask permitting), not 0600
    import os
    import stat

    mode = stat.S_IMODE((tmp_path / "g.png").stat().st_mode)
    assert mode == 0o666 & ~_umask(), oct(mode)
    assert os.access(tmp_path / "g.png", os.R_OK)


def _umask() -> int:
    import os

    old = os.umask(0)
    os.umask(old)
    return old


# ----- 8. eval --compare -------------------------------------------------------------------------
@pytest.mark.slow
def test_eval_compare_judges_base_and_composition_with_one_counted_bar(store: Store) -> None:
    from sepme_engine.generate import evaluate_base

    fake_increments(store, "circle")
    seen: list[tuple[float, int]] = []
    prompts = ["a red circle on stripes", "a blue square on checks"]
    res = evaluate_base(
        store,
        n_per_prompt=1,
        erase=["circle"],
        compare=True,
        prompts=prompts,
        n_blank=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    per_run = 2 * 1 + 13 * 1 + 2
    assert {t for _, t in seen} == {2 * per_run}
    assert seen[-1][0] == pytest.approx(2 * per_run)
    assert res.erased == ("circle",) and res.base_report is not None
    assert res.report.n_full_prompts == res.base_report.n_full_prompts == 2
    from sepme_cli.generate import _eval_rows

    rows = _eval_rows(res.report, res.base_report)
    circle = next(r for r in rows if r[0] == "circle")
    want = 100 * (res.report.full["circle"] - res.base_report.full["circle"])
    assert circle[6] == f"{want:+.1f}"
    with pytest.raises(Exception, match="nothing to compare"):
        evaluate_base(store, compare=True, plain=True, prompts=prompts, n_blank=1)


# ----- 6. tables at 80 columns -------------------------------------------------------------------
def _fits(text: str, words: list[str]) -> None:
    for line in text.splitlines():
        assert len(line) <= 80, line
    for w in words:
        assert w in text, w


def test_tables_fit_80_columns_without_breaking_words(store: Store, tmp_path: Path) -> None:
    fake_increments(store, "van-gogh", "a-rather-long-concept-name")
    (store.root / "config.toml").write_text("[erase.toy]\nsteps = 200\n", encoding="utf-8")
    env = {"COLUMNS": "80"}
    for argv, words in [
        (["list"], ["concept", "a-rather-long-concept-name", "active"]),
        (["base", "list"], ["prediction", "v_prediction", "builtin"]),
        (["config", "show"], ["erase.sd2-v.image_guidance", "config.toml:2"]),
        (["inspect"], ["concept", "‖ΔW‖/‖W‖", "a-rather-long-concept-name"]),
        (["variants"], ["variant"]),
    ]:
        res = runner.invoke(app, argv, env=env)
        assert res.exit_code == 0, (argv, res.output)
        _fits(res.stdout, words)
        # a dropped or kept header is whole, never "iteratio/ns"
        assert ("iteratio" not in res.stdout) or ("iterations" in res.stdout)
    full = json.loads(runner.invoke(app, ["list", "--json"], env=env).stdout)
    assert {"prompt", "created", "iterations", "stop_reason", "method"} <= set(full[0])


# ----- 5. no library warnings; concepts the tokenizer does not know ----------------------------
def test_spelled_out_words_on_the_toy_and_clip_tokenizers() -> None:
    from sepme_engine.models.text import spelled_out_words
    from sepme_engine.models.tokenizer import clip_tokenizer
    from sepme_engine.toy.tokenizer import toy_tokenizer

    toy, clip = toy_tokenizer(), clip_tokenizer()
    assert [w for w, _ in spelled_out_words(toy, "Van Gogh")] == ["Van", "Gogh"]
    assert [w for w, _ in spelled_out_words(toy, "a photo of a dog")] == ["dog"]
    assert spelled_out_words(toy, "a red circle on stripes") == []
    assert spelled_out_words(toy, "cyan") == []  # one token on the toy, two on CLIP
    assert spelled_out_words(clip, "Van Gogh") == []  # CLIP knows both words
    assert spelled_out_words(clip, "greg rutkowski") == []  # rut + kowski: subwords, not letters
    assert [w for w, _ in spelled_out_words(clip, "xqzt")] == ["xqzt"]


def test_erase_refuses_a_concept_the_toy_cannot_read(store: Store) -> None:
    res = run("erase", "van gogh", "--steps", "1", "--images", "1")
    assert res.exit_code == 1
    assert "does not know 'van', 'gogh'" in res.stderr and "--force" in res.stderr
    assert "Traceback" not in res.output
    assert json.loads(run("list", "--json").stdout) == []


def test_long_prompts_warn_in_sepmes_words_only(
    store: Store, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    long = "a red circle on stripes with many more words than the toy base reads"
    res = run("generate", long, "-o", str(tmp_path / "l.png"), "--n", "1", "--steps", "2")
    assert res.exit_code == 0, res.output
    assert "tokens; toy reads 8" in " ".join(res.stderr.split())
    res = run("erase", long, "--steps", "1")
    assert res.exit_code == 1 and "tokens long" in res.stderr
    leaked = capfd.readouterr()  # what libraries wrote past the CLI's own streams
    for text in (res.output, leaked.out, leaked.err):
        assert "[transformers]" not in text and "truncated because CLIP" not in text
        assert "Token indices sequence length" not in text


# ----- 7. smaller --------------------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]


def test_every_config_key_is_documented_with_an_example() -> None:
    from sepme_engine.config import ERASE_KEYS, KEY_DOCS, TOP_KEYS

    doc = (ROOT / "docs" / "config.md").read_text(encoding="utf-8")
    res = runner.invoke(app, ["config", "show", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for key in [*TOP_KEYS, *ERASE_KEYS]:
        assert f"| `{key}` |" in doc, key
        example, _ = KEY_DOCS[key]
        assert f"{key} = {example}" in res.stdout, key
    assert "[erase.ARCH]" in res.stdout and "[erase]" in res.stdout


def test_default_base_in_config_is_used(store: Store) -> None:
    (store.root).mkdir(parents=True, exist_ok=True)
    (store.root / "config.toml").write_text('default_base = "nope"\n', encoding="utf-8")
    res = run("list")
    assert res.exit_code == 1 and "'nope'" in res.stderr  # honoured, not silently ignored


def test_config_error_in_a_sub_table_names_its_line(store: Store) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "config.toml").write_text(
        'device = "cpu"\n[erase]\nlr = 0.02\n[erase.sd15]\nsteps = 10\n', encoding="utf-8"
    )
    res = run("config", "show")
    assert res.exit_code == 1
    assert "config.toml:4: [erase.sd15] is not an architecture" in res.stderr
    assert "sd1" in res.stderr


def test_flags_show_no_value_type_in_help() -> None:
    for argv in (["base", "add", "--help"], ["erase", "--help"], ["export", "--help"]):
        res = runner.invoke(app, argv, env={"COLUMNS": "120"})
        assert res.exit_code == 0
        assert "<bool>" not in res.stdout, argv
    assert "<int>" in runner.invoke(app, ["erase", "--help"], env={"COLUMNS": "120"}).stdout


def test_generate_help_describes_the_layout() -> None:
    res = runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    text = " ".join(res.stdout.split())
    assert "side by side" not in text
    assert "above the composition's" in text


def _complete(words: str, home: Path) -> tuple[list[str], bool]:
    """Run the shell-completion protocol in a fresh interpreter: (completions, torch imported)."""
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "SEPME_HOME": str(home),
        "_SEPME_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    code = (
        "import sys\n"
        "try:\n    from sepme_cli.app import main; main()\nexcept SystemExit:\n    pass\n"
        "print('TORCH=' + str('torch' in sys.modules), file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    return proc.stdout.split(), "TORCH=False" not in proc.stderr


def test_completion_of_store_names_without_torch(store: Store, sepme_home: Path) -> None:
    fake_increments(store, "circle", "cross", "red")
    assert run("compose", "--erase", "circle", "--name", "first").exit_code == 0
    cases = {
        "sepme show c": ["circle", "cross"],
        "sepme rm r": ["red"],
        "sepme compose --erase circle,c": ["circle,cross"],
        "sepme compose --restore ": ["circle", "cross", "red"],
        "sepme export x --format l": ["ldm", "lora"],
        "sepme generate x --variant f": ["first"],
        "sepme variants rm ": ["first"],
        "sepme base show t": ["toy"],
        "sepme list --base ": ["toy"],
        "sepme show --base nope c": [],  # unknown base: nothing, no traceback
    }
    for words, want in cases.items():
        got, heavy = _complete(words, sepme_home)
        assert got == want, (words, got)
        assert not heavy, words


def test_completion_formats_match_the_exporter() -> None:
    from sepme_cli._complete import FORMATS
    from sepme_engine.export.run import FORMATS as ENGINE_FORMATS

    assert FORMATS == ENGINE_FORMATS
