"""The benchmarks' --quick paths, shrunk further so they fit the default test run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# each trains several methods on the toy base and judges their images: minutes on 2 cores
pytestmark = pytest.mark.slow


def test_erasure_benchmark_quick_path(tmp_path: Path) -> None:
    from benchmarks.erasure import main

    argv = ["--quick", "--n", "1", "--n-full", "2", "--n-blank", "4", "--max-steps", "3"]
    argv += ["--scenes", "1,5", "--methods", "sepme,sepme-cf,uce", "--out", str(tmp_path)]
    result = main(argv)
    data = json.loads((tmp_path / "erasure_quick.json").read_text())
    assert data["settings"]["quick"] is True and data["settings"]["n_per_prompt"] == 1
    scene = data["scenes"]["1: shapes"]
    assert set(scene["methods"]) == {"sepme", "sepme-cf", "uce"}
    multi = data["scenes"]["5: multi-concept"]["methods"]["sepme"]["t0"]["concepts"]
    assert {c for c, v in multi.items() if v["group"] == "forgotten"} == {"circle", "square", "red"}
    cf = [r for r in data["training_log"] if r["method"] == "sepme-cf"]
    assert cf and all(r["unet_passes_total"] == 0 and r["iterations"] == 0 for r in cf)
    # SepME's cost to erase circle: its default run cut at growing caps, like ESD-x's
    tried = data["cost_to_erase_circle"]["sepme"]["tried"]
    assert tried and all(t["iterations"] <= t["cap"] for t in tried)
    t1 = scene["methods"]["sepme"]["t1"]
    assert t1["concepts"]["circle"]["group"] == "restored"
    assert t1["concepts"]["triangle"]["group"] == "forgotten"
    # decoupled: restoring circle while triangle stays erased gives the base's images back
    # up to float32 round-off
    # (images in [0, 1]; 1e-3 is a quarter of one 8-bit level, far above float32's 6e-8)
    assert t1["restored_distance"]["bare_mean_abs"] < 1e-3
    assert {r["method"] for r in data["training_log"]} == {"sepme", "sepme-cf", "uce"}
    bs = data["settings"]["sepme"]["batch_size"]
    assert all(
        r["unet_passes_training"] == 3 * bs * r["iterations"]
        for r in data["training_log"]
        if r["method"] == "sepme"
    )
    md = (tmp_path / "erasure_quick.md").read_text()
    assert "## Scene 1: shapes" in md and "| sepme | t1 |" in md
    assert result["wall_s"] > 0


def test_erase_bar_quick_path(tmp_path: Path) -> None:
    from benchmarks.erase_bar import main

    argv = ["--quick", "--n", "1", "--n-full", "3", "--n-blank", "4", "--max-steps", "14"]
    argv += ["--concepts", "circle,red", "--out", str(tmp_path)]
    main(argv)
    data = json.loads((tmp_path / "erase_bar_quick.json").read_text())
    assert set(data["rows"]) == {"circle", "red"}
    for c, entry in data["rows"].items():
        default, low = entry["default"], entry["low_tau"]
        assert default["concepts"][c]["group"] == "forgotten"
        assert low["cost"]["tau"] < default["cost"]["tau"] == data["settings"]["sepme"]["tau"]
        # the default increment is the lower-τ run cut where τ = 0 stops: never later than it
        assert default["cost"]["iterations"] <= low["cost"]["iterations"] <= 14
        assert default["cost"]["e_k"] == 13  # blank + the other 12 toy concepts
        assert set(data["verdict"][c]) == {
            "bare_lift_le_0",
            "full_lift_le_10",
            "others_ge_base_minus_3",
        }
    md = (tmp_path / "erase_bar_quick.md").read_text()
    assert "| circle | -0.001 |" in md and "others ≥ base − 3" in md


def test_erase_bar_given_taus(tmp_path: Path) -> None:
    from benchmarks.erase_bar import main

    argv = ["--quick", "--n", "1", "--n-full", "2", "--n-blank", "2", "--max-steps", "12"]
    main([*argv, "--concepts", "circle", "--taus=-0.5", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "erase_bar_quick.json").read_text())
    runs = data["rows"]["circle"]
    assert list(runs) == ["default", "tau=-0.5"]
    default, low = runs["default"]["cost"], runs["tau=-0.5"]["cost"]
    assert default["tau"] == data["settings"]["sepme"]["tau"] and low["tau"] == -0.5
    # τ −0.5 is never reached: that run goes to the cap; the default stops no later than it
    assert low["iterations"] == 12 and low["stop_reason"] == "cap"
    assert default["iterations"] <= low["iterations"]
    md = (tmp_path / "erase_bar_quick.md").read_text()
    assert "| circle | -0.5 |" in md and "then τ = -0.5" in md
