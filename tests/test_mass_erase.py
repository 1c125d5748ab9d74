"""Mass erasure (issue 16): `erase --from-file`, resuming, the accelerate split, and moving
increments between stores. Tiny settings on the toy base: 1 training image of 2 sampler steps,
3 iterations, no verdict (or the closed form, which needs no UNet pass)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepme_cli.app import app
from sepme_engine.errors import AlreadyExists, BaseMismatch, CorruptEntry, InvalidInput, NotFound
from sepme_engine.store import Store

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--no-verify"]


def tiny_config(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text("[erase.toy]\nimages = 1\nimage_steps = 2\n")


def concept_file(tmp_path: Path, text: str, name: str = "concepts.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def digests(root: Path, base: str = "toy") -> dict[str, str]:
    folder = root / "manifests" / "increments" / base
    return {
        p.stem: json.loads(p.read_text())["blob"]["digest"] for p in sorted(folder.glob("*.json"))
    }


def manifest(root: Path, concept: str, base: str = "toy") -> dict:
    return json.loads((root / "manifests" / "increments" / base / f"{concept}.json").read_text())


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEPME_FAULT")}
    env.update(SEPME_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


def sepme(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sepme_cli", *args],
        cwd=ROOT,
        env=cli_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=600,
    )


# -- the file ------------------------------------------------------------------------------


def test_concept_file_lines_comments_and_preserve(tmp_path: Path) -> None:
    from sepme_engine.erase.batch import parse_concept_file

    path = concept_file(
        tmp_path,
        '# artists\n\nVan Gogh\n  circle   # a shape\nsquare --preserve "a green square" '
        "--preserve red\n",
    )
    got = [(e.concept, e.preserve, e.line) for e in parse_concept_file(path)]
    assert got == [
        ("Van Gogh", (), 3),
        ("circle", (), 4),
        ("square", ("a green square", "red"), 5),
    ]


@pytest.mark.parametrize(
    ("text", "error", "words"),
    [
        ("circle\nCircle\n", InvalidInput, "line 1"),  # the same store name twice
        ("circle --preserve\n", InvalidInput, ":1:"),
        ("circle --steps 3\n", InvalidInput, "unexpected '--steps'"),
        ('circle --preserve "open\n', InvalidInput, ":1:"),
        ("# nothing\n\n", InvalidInput, "names no concept"),
    ],
)
def test_concept_file_errors_name_the_line(
    tmp_path: Path, text: str, error: type, words: str
) -> None:
    from sepme_engine.erase.batch import parse_concept_file

    with pytest.raises(error) as exc:
        parse_concept_file(concept_file(tmp_path, text))
    assert words in str(exc.value)
    with pytest.raises(NotFound):
        parse_concept_file(tmp_path / "absent.txt")


def test_share_is_disjoint_and_covers_the_list() -> None:
    from sepme_engine.erase.batch import ListEntry, share

    entries = [ListEntry(str(i)) for i in range(7)]
    shares = [share(entries, r, 3) for r in range(3)]
    assert sorted(e.concept for s in shares for e in s) == sorted(e.concept for e in entries)
    assert [len(s) for s in shares] == [3, 2, 2]


# -- one process: all-known, summary, resume ----------------------------------------------


def test_from_file_is_all_known_resumes_and_refuses_changed_settings(
    tmp_path: Path, sepme_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sepme_engine.erase.run import erase

    tiny_config(sepme_home)
    path = concept_file(tmp_path, "# shapes\ncircle\nsquare\n\nred\n")
    res = runner.invoke(app, ["erase", "--from-file", str(path), *TINY])
    assert res.exit_code == 0, res.output
    assert "3 concepts on toy" in res.stdout and "3 erased, 0 skipped, 0 failed" in res.stderr
    got = digests(sepme_home)
    assert sorted(got) == ["circle", "red", "square"]
    # all-known: each E_k holds the other two concepts of the list
    e_k = manifest(sepme_home, "square")["preserve_prompts"]
    assert "circle" in e_k and "red" in e_k and "square" not in e_k

    # the same increments as naming the three on the command line (another store)
    other = tmp_path / "other"
    tiny_config(other)
    erase(
        Store(other),
        ["circle", "square", "red"],
        overrides={"steps": 3},
        verify=False,
    )
    assert digests(other) == got

    # rerun: nothing retrained, said so
    created = {c: manifest(sepme_home, c)["created"] for c in got}
    res = runner.invoke(app, ["erase", "--from-file", str(path), *TINY])
    assert res.exit_code == 0, res.output
    assert "0 erased, 3 skipped, 0 failed" in res.stderr
    assert "circle: stored earlier with the same settings and E_k — skipped" in res.stderr
    assert {c: manifest(sepme_home, c)["created"] for c in got} == created

    # other settings: refused before anything trains, with the next step
    res = runner.invoke(app, ["erase", "--from-file", str(path), "--steps", "4", "--no-verify"])
    assert res.exit_code == 1
    assert "settings.max_steps" in res.stderr and "--force" in res.stderr
    assert {c: manifest(sepme_home, c)["created"] for c in got} == created

    # another E_k (circle gains a preserve prompt): the same, naming the concept and why
    changed = concept_file(tmp_path, 'circle --preserve "a red square"\nsquare\nred\n', "b.txt")
    res = runner.invoke(app, ["erase", "--from-file", str(changed), *TINY])
    assert res.exit_code == 1 and "circle (e_k)" in res.stderr, res.stderr
    assert {c: manifest(sepme_home, c)["created"] for c in got} == created


def test_a_failed_concept_is_reported_and_the_exit_is_non_zero(
    tmp_path: Path, sepme_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sepme_engine.erase import sepme_cf
    from sepme_engine.errors import TrainingDiverged

    real = sepme_cf.train

    def failing(pipe, prompt, *args, **kwargs):  # type: ignore[no-untyped-def]
        if prompt == "square":
            raise TrainingDiverged("the loss became NaN", hint="lower the learning rate")
        return real(pipe, prompt, *args, **kwargs)

    monkeypatch.setattr(sepme_cf, "train", failing)
    path = concept_file(tmp_path, "circle\nsquare\nred\n")
    res = runner.invoke(
        app, ["erase", "--from-file", str(path), "--method", "sepme-cf", "--no-verify", "--json"]
    )
    assert res.exit_code == 1, res.output
    rows = {r["concept"]: r for r in json.loads(res.stdout)["rows"]}
    assert rows["square"]["status"] == "failed" and "NaN" in rows["square"]["detail"]
    # the error as data, and the CLI's words for it beside it (not the engine's text)
    assert rows["square"]["error"]["error"] == "TrainingDiverged"
    assert rows["square"]["next_step"] == "lower the learning rate"
    assert rows["circle"]["error"] is None and rows["circle"]["next_step"] is None
    assert rows["circle"]["status"] == rows["red"]["status"] == "erased"
    assert sorted(digests(sepme_home)) == ["circle", "red"]
    # the progress line: the error's message and its next step (the CLI's, from the data)
    said = " ".join(res.stderr.split())
    assert "square: failed — the loss became NaN — lower the learning rate" in said


def test_per_line_preserve_joins_that_concepts_e_k_only(tmp_path: Path, store: Store) -> None:
    from sepme_engine.erase.batch import erase_list, parse_concept_file

    path = concept_file(tmp_path, 'circle\nsquare --preserve "a green square"\n')
    report = erase_list(store, parse_concept_file(path), method="sepme-cf", verify=False)
    assert [r.status for r in report.rows] == ["erased", "erased"]
    assert "a green square" in manifest(store.root, "square")["preserve_prompts"]
    assert "a green square" not in manifest(store.root, "circle")["preserve_prompts"]


# -- concurrency: the E_k view check -------------------------------------------------------


def test_list_mates_landing_meanwhile_are_no_conflict(tmp_path: Path, store: Store) -> None:
    """Rank 0 trains while rank 1 of the same list saves its increments: not a conflict (they
    are in rank 0's E_k already). An unrelated increment landing meanwhile still is."""
    from sepme_engine.erase.batch import ListEntry, erase_list
    from sepme_engine.erase.run import erase

    entries = [ListEntry("circle"), ListEntry("square"), ListEntry("red"), ListEntry("blue")]
    landed: list[str] = []

    def other_rank(ev):  # type: ignore[no-untyped-def]
        if ev.kind == "start" and not landed:
            landed.append(ev.concept)
            r1 = erase_list(Store(store.root), entries, rank=1, world=2, method="sepme-cf")
            assert [r.status for r in r1.rows] == ["erased", "erased"]

    r0 = erase_list(
        store, entries, rank=0, world=2, method="sepme-cf", verify=False, on_event=other_rank
    )
    assert landed == ["circle"]
    assert [(r.concept, r.status) for r in r0.rows] == [("circle", "erased"), ("red", "erased")]
    assert sorted(digests(store.root)) == ["blue", "circle", "red", "square"]

    # control: a concept outside the list lands while the list trains -> E_k stale, refused
    fresh = Store(tmp_path / "fresh")
    stray: list[str] = []

    def unrelated(ev):  # type: ignore[no-untyped-def]
        if ev.kind == "start" and not stray:
            stray.append(ev.concept)
            erase(Store(fresh.root), ["cyan"], method="sepme-cf", verify=False)

    r = erase_list(fresh, entries[:2], method="sepme-cf", verify=False, on_event=unrelated)
    assert r.rows[0].status == "failed" and "another sepme process" in r.rows[0].detail
    assert sorted(digests(fresh.root)) == ["cyan"]  # nothing stored on a stale E_k


# -- a killed run resumes -------------------------------------------------------------------


def test_a_killed_list_run_resumes_without_retraining(tmp_path: Path) -> None:
    home = tmp_path / "home"
    tiny_config(home)
    path = concept_file(tmp_path, "circle\nsquare\ntriangle\n")
    # SIGKILL once the second increment's blob is stored, before its manifest
    killed = sepme(
        home,
        "erase",
        "--from-file",
        str(path),
        *TINY,
        SEPME_FAULT_KILL_AT="increment.after-blob:2",
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert sorted(digests(home)) == ["circle"]
    created = manifest(home, "circle")["created"]

    done = sepme(home, "erase", "--from-file", str(path), *TINY)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "circle: stored earlier with the same settings and E_k — skipped" in done.stderr
    assert "2 erased, 1 skipped, 0 failed" in done.stderr
    assert manifest(home, "circle")["created"] == created  # not retrained
    assert sorted(digests(home)) == ["circle", "square", "triangle"]
    active = json.loads((home / "manifests" / "compositions" / "toy.json").read_text())["active"]
    assert active == ["circle", "square", "triangle"]


# -- two processes (accelerate, gloo on CPU) -------------------------------------------------


@pytest.mark.slow
def test_two_processes_make_the_same_increments_as_one(tmp_path: Path) -> None:
    six = concept_file(tmp_path, "circle\nsquare\ntriangle\nred\ngreen\nblue\n")
    one, two = tmp_path / "one", tmp_path / "two"
    tiny_config(one)
    tiny_config(two)
    r1 = sepme(one, "erase", "--from-file", str(six), *TINY)
    assert r1.returncode == 0, r1.stderr[-3000:]
    r2 = sepme(
        two,
        "erase",
        "--from-file",
        str(six),
        *TINY,
        "--launcher",
        "accelerate",
        "--num-processes",
        "2",
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "[1/2] square:" in r2.stderr  # rank 1 trained its share: positions 1, 3, 5
    assert "6 concepts on toy (2 process(es))" in r2.stdout  # rank 0's summary of all
    assert r2.stdout.count("erased") >= 6
    d1, d2 = digests(one), digests(two)
    assert len(d1) == 6 and d1 == d2  # bit-identical increments


# -- export / import ------------------------------------------------------------------------


def test_export_import_round_trip_and_refusals(tmp_path: Path, store: Store) -> None:
    from sepme_engine.erase.run import erase
    from sepme_engine.increments import active_set
    from sepme_engine.transfer import export_increments, import_increments

    erase(store, ["circle", "square"], method="sepme-cf", verify=False)
    out = tmp_path / "export"
    res = runner.invoke(app, ["store", "export-increments", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert [m["concept"] for m in json.loads(res.stdout)["items"]] == ["circle", "square"]
    assert not list(tmp_path.glob(".export*"))  # no temporary left
    with pytest.raises(AlreadyExists):
        export_increments(store, out)

    target = Store(tmp_path / "target")
    rep = import_increments(target, out)
    assert [m.status for m in rep.items] == ["imported", "imported"]
    assert digests(target.root) == digests(store.root)
    for c in ("circle", "square"):
        a, b = manifest(store.root, c), manifest(target.root, c)
        assert a == b
        blob = target.check_blob(
            __import__("sepme_engine.store", fromlist=["BlobRef"]).BlobRef.from_dict(b["blob"]),
            always=True,
        )
        assert blob.read_bytes() == (store.blobs_dir / blob.name).read_bytes()
    assert active_set(target, "toy") == ["circle", "square"]
    again = import_increments(target, out)
    assert [m.status for m in again.items] == ["unchanged", "unchanged"]

    # a damaged blob: refused, nothing written
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    blob = next((bad / "blobs").iterdir())
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    empty = Store(tmp_path / "empty")
    with pytest.raises(CorruptEntry, match="damaged"):
        import_increments(empty, bad)
    assert not (empty.root / "manifests" / "increments").exists()

    # a base this store does not have (by digest): refused with the next step
    alien = tmp_path / "alien"
    shutil.copytree(out, alien)
    fake = "sha256:" + "0" * 64
    index = json.loads((alien / "sepme-export.json").read_text())
    for e in index["increments"]:
        e["base_digest"] = fake
    (alien / "sepme-export.json").write_text(json.dumps(index))
    for p in (alien / "manifests" / "toy").glob("*.json"):
        data = json.loads(p.read_text())
        p.write_text(json.dumps({**data, "base_digest": fake}))
    res = runner.invoke(app, ["store", "import", str(alien)], env={"SEPME_HOME": str(empty.root)})
    assert res.exit_code == 1
    assert "no base with that digest" in res.stderr and "sepme base add" in res.stderr
    assert "Traceback" not in res.output
    assert not (empty.root / "manifests" / "increments").exists()

    # the same name with other tensors: refused without --force
    erase(
        Store(empty.root), ["circle"], method="sepme-cf", verify=False, use_default_preserve=False
    )
    with pytest.raises(AlreadyExists):
        import_increments(empty, out)
    with pytest.raises(BaseMismatch):
        import_increments(empty, alien)


def test_an_increment_file_depends_only_on_its_content(tmp_path: Path) -> None:
    """safetensors orders the metadata by a per-process hash; the saved bytes must not (blob
    digests compare increments across processes). Saved in two interpreters, loaded back."""
    code = (
        "import sys, torch\n"
        "from sepme_engine.delta.increment import Increment\n"
        "g = torch.Generator().manual_seed(0)\n"
        "inc = Increment.dense({f'l{i}': torch.randn(4, 3, generator=g) for i in range(5)},"
        " {f'sepme.k{i}': 'é' * i for i in range(12)})\n"
        "inc.save(sys.argv[1])\n"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for p in paths:
        subprocess.run([sys.executable, "-c", code, str(p)], check=True, cwd=ROOT, timeout=120)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    from sepme_engine.delta.increment import Increment

    back = Increment.load(paths[0])
    assert back.meta["sepme.k3"] == "ééé" and back.delta("l4").shape == (4, 3)
