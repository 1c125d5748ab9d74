"""Regenerate the files derived from the CLI: shell completions and docs/cli.md.

python scripts/gen_docs.py          # write them
python scripts/gen_docs.py --check  # exit 1 if any is stale (a test runs this)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELLS = {
    "bash": "completions/sepme.bash",
    "zsh": "completions/_sepme",
    "fish": "completions/sepme.fish",
}


def _run(args: list[str], env: dict[str, str]) -> str:
    return subprocess.run(
        args, env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def generated() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("_SEPME")}
    env["COLUMNS"] = "100"
    files: dict[str, str] = {}
    for shell, rel in SHELLS.items():
        files[rel] = _run(
            [sys.executable, "-c", "from sepme_cli.app import main; main()"],
            {**env, "_SEPME_COMPLETE": f"source_{shell}"},
        ).replace(sys.executable, "sepme")
    from typer.testing import CliRunner  # noqa: F401  (typer present)

    out = ROOT / "docs" / ".cli.md.tmp"
    _run(
        [
            sys.executable,
            "-m",
            "typer",
            "sepme_cli.app",
            "utils",
            "docs",
            "--name",
            "sepme",
            "--output",
            str(out),
        ],
        env,
    )
    files["docs/cli.md"] = _fence_examples(out.read_text(encoding="utf-8"))
    out.unlink()
    return files


def _fence_examples(text: str) -> str:
    """typer writes a docstring's indented example lines HTML-escaped (`&quot;`), which an
    indented Markdown code block shows literally: fence them as `console` blocks, unescaped."""
    import html

    out: list[str] = []
    block: list[str] = []
    for line in [*text.split("\n"), ""]:
        if line.startswith("    $ "):
            block.append(html.unescape(line[4:]))
            continue
        if block:
            out += ["```console", *block, "```"]
            block = []
        out.append(line)
    return "\n".join(out[:-1])


def main() -> int:
    check = "--check" in sys.argv
    stale = []
    for rel, text in generated().items():
        path = ROOT / rel
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print("stale: " + ", ".join(stale) + " — run `python scripts/gen_docs.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
