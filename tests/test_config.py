from __future__ import annotations

from pathlib import Path

import pytest

from sepme_engine.config import load_config
from sepme_engine.errors import ConfigError


def test_defaults_without_file(tmp_path: Path) -> None:
    cfg = load_config(tmp_path)
    assert not cfg.exists
    assert cfg.get("device") == "auto"
    assert cfg.erase("sd1")["lr"] == pytest.approx(
        1e-2
    )  # a parsed literal: equal, approx for style
    assert all(s.source == "default" for s in cfg.settings)


def test_sources_and_precedence(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        'device = "cpu"\n\n[erase]\nlr = 0.05\n\n[erase.toy]\nsteps = 123\n', encoding="utf-8"
    )
    cfg = load_config(tmp_path)
    by_key = {s.key: s for s in cfg.settings}
    assert by_key["device"].value == "cpu" and by_key["device"].source.endswith("config.toml:1")
    assert by_key["erase.sd1.lr"].value == 0.05 and by_key["erase.sd1.lr"].source.endswith(":4")
    assert cfg.erase("toy")["steps"] == 123 and by_key["erase.toy.steps"].source.endswith(":7")
    assert cfg.erase("sd1")["steps"] == 1000


def test_malformed_names_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('device = "cpu"\nlr = = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config.toml.*line 2"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text, match",
    [
        ('colour = "red"\n', "unknown setting 'colour'"),
        ('device = "tpu"\n', "device must be one of"),
        ('[erase]\nlr = "fast"\n', r"config.toml:2: lr must be float"),
        ("[erase.sd1]\nbogus = 1\n", "unknown erase setting 'bogus'"),
    ],
)
def test_bad_values(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path)


def test_preserve_defaults_and_list_values(tmp_path: Path) -> None:
    from sepme_engine.toy.world import CONCEPTS

    cfg = load_config(tmp_path)
    assert cfg.erase("toy")["preserve"] == list(CONCEPTS)  # the toy world's concepts
    assert cfg.erase("sd1")["preserve"] == []  # real bases: none by default
    cfg.erase("sd1")["preserve"].append("x")  # a caller's copy, not the shared default
    assert load_config(tmp_path).erase("sd2")["preserve"] == []

    (tmp_path / "config.toml").write_text(
        '[erase.toy]\npreserve = []\n[erase.sd1]\npreserve = ["a photo", "a painting"]\n',
        encoding="utf-8",
    )
    cfg = load_config(tmp_path)
    assert cfg.erase("toy")["preserve"] == []
    assert cfg.erase("sd1")["preserve"] == ["a photo", "a painting"]

    (tmp_path / "config.toml").write_text('[erase]\npreserve = "a photo"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"config.toml:2: preserve must be a list of prompts"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text("[erase]\npreserve = [1, 2]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="list of prompts"):
        load_config(tmp_path)
