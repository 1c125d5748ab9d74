"""Check that sepme's diffusers-folder export loads with transformers 4.x as well as 5.x.

Run with the main environment (`.venv/bin/python scripts/check_tf4.py`; `.ci/run` does after the
test suite). For SD 1.x and SD 2.x (768-v) models with the real topology at reduced width it
exports a composition (random ΔW on every cross-attention K/V) through `export_diffusers`, then
loads each folder in `.venv-tf4` (transformers 4.46 + diffusers 0.31, made by
scripts/setup_tf4.sh) and in this environment, comparing every loaded weight with the exported
tensors and the tokenizer's ids with the original's. Exit status 1 on any mismatch, e.g. a text
encoder that transformers 4.x initialises at random because its keys lack `text_model.`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TF4_PYTHON = ROOT / ".venv-tf4" / "bin" / "python"
PROMPTS = ("a photo of a cat", "Van Gogh, starry night!")


def main() -> int:
    sys.path.insert(0, str(ROOT))
    import torch

    from sepme_engine.delta.layers import kv_shapes
    from sepme_engine.export.diffusers_dir import export_diffusers
    from tests._tiny import make_real_topology_pipeline

    if not TF4_PYTHON.is_file():
        print(f"no {TF4_PYTHON}: run `bash scripts/setup_tf4.sh` first", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="sepme-tf4-") as tmp:
        for arch in ("sd1", "sd2-v"):
            pipe = make_real_topology_pipeline(arch, seed=21)
            g = torch.Generator().manual_seed(0)
            deltas = {
                k: torch.randn(s, generator=g) * 0.02 for k, s in kv_shapes(pipe.unet).items()
            }
            out = Path(tmp) / arch
            export_diffusers(pipe, deltas, out, dtype="fp32", profile=arch)
            expected = {
                "input_ids": {p: pipe.tokenizer(p).input_ids for p in PROMPTS},
                "prediction_type": pipe.scheduler.config.prediction_type,
            }
            exp_path = Path(tmp) / f"{arch}.json"
            exp_path.write_text(json.dumps(expected))
            for python in (TF4_PYTHON, Path(sys.executable)):
                res = subprocess.run(
                    [str(python), str(ROOT / "scripts" / "tf4_load.py"), str(out), str(exp_path)],
                    capture_output=True,
                    text=True,
                    env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
                )
                lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
                print("\n".join(lines))
                if res.returncode != 0:
                    failures += 1
                    print(res.stderr[-3000:], file=sys.stderr)
    print("transformers 4.x / 5.x load check:", "FAILED" if failures else "ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
