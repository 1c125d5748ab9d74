"""The erasure benchmark's --quick path, shrunk further so it fits the default test run."""

from __future__ import annotations

import json
from pathlib import Path


def test_erasure_benchmark_quick_path(tmp_path: Path) -> None:
    from benchmarks.erasure import main

    argv = ["--quick", "--n", "1", "--n-full", "2", "--n-blank", "4", "--max-steps", "3"]
    argv += ["--scenes", "1", "--methods", "sepme,uce", "--out", str(tmp_path)]
    result = main(argv)
    data = json.loads((tmp_path / "erasure_quick.json").read_text())
    assert data["settings"]["quick"] is True and data["settings"]["n_per_prompt"] == 1
    scene = data["scenes"]["1: shapes"]
    assert set(scene["methods"]) == {"sepme", "uce"}
    t1 = scene["methods"]["sepme"]["t1"]
    assert t1["concepts"]["circle"]["group"] == "restored"
    assert t1["concepts"]["triangle"]["group"] == "forgotten"
    # decoupled: restoring circle while triangle stays erased gives the base's images back
    # up to float32 round-off
    assert t1["restored_distance"]["bare_mean_abs"] < 1e-3
    assert {r["method"] for r in data["training_log"]} == {"sepme", "uce"}
    bs = data["settings"]["sepme"]["batch_size"]
    assert all(
        r["unet_passes_training"] == 3 * bs * r["iterations"]
        for r in data["training_log"]
        if r["method"] == "sepme"
    )
    # the erase issue's single-concept section: default and lower τ for each concept
    assert set(data["single"]) == {"circle", "red", "stripes"}
    for c, entry in data["single"].items():
        assert entry["default"]["concepts"][c]["group"] == "forgotten"
        assert entry["low_tau"]["cost"]["tau"] < 0 <= entry["default"]["cost"]["tau"]
        assert data["settings"]["single_full_prompts"] == data["settings"]["full_prompts"]
    md = (tmp_path / "erasure_quick.md").read_text()
    assert "## Scene 1: shapes" in md and "| sepme | t1 |" in md
    assert "## One concept erased alone" in md
    assert result["wall_s"] > 0
