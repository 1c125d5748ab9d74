"""Run INSIDE .venv-tf4 (transformers 4.46, diffusers 0.31): load a sepme diffusers export and
compare every weight the pipeline holds with the tensors in the exported files.

    .venv-tf4/bin/python scripts/tf4_load.py FOLDER EXPECTED.json

EXPECTED.json holds {"input_ids": {prompt: [ids]}, "prediction_type": ...} computed by the main
environment. Exit status 0 when everything matches, 1 with a list of problems otherwise. Kept free
of sepme imports: sepme itself needs transformers 5.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: Path, expected_path: Path) -> int:
    import diffusers
    import torch
    import transformers
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    expected = json.loads(expected_path.read_text())
    problems: list[str] = []
    print(
        f"transformers {transformers.__version__}, diffusers {diffusers.__version__}, torch {torch.__version__}"
    )
    _, info = CLIPTextModel.from_pretrained(folder / "text_encoder", output_loading_info=True)
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info[kind]:
            problems.append(f"text_encoder {kind}: {len(info[kind])} (e.g. {list(info[kind])[:2]})")
    try:
        pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # report it with the text-encoder findings above
        problems.append(f"StableDiffusionPipeline.from_pretrained: {type(e).__name__}: {e}"[:300])
        for p in problems:
            print("  FAIL", p)
        return 1
    files = {
        "unet": "diffusion_pytorch_model.safetensors",
        "vae": "diffusion_pytorch_model.safetensors",
        "text_encoder": "model.safetensors",
    }
    n = 0
    for comp, fname in files.items():
        stored = load_file(str(folder / comp / fname))
        state = getattr(pipe, comp).state_dict()
        used = set()
        for key, value in state.items():
            if key not in stored and comp == "text_encoder" and "text_model." + key in stored:
                key_in_file = "text_model." + key  # transformers 5 drops the prefix in memory
            else:
                key_in_file = key
            used.add(key_in_file)
            key = key_in_file
            if key not in stored:
                if key.endswith("position_ids"):  # a buffer, not a weight
                    continue
                problems.append(f"{comp}: {key} is not in {fname}")
                continue
            n += 1
            if not torch.equal(value, stored[key].to(value.dtype)):
                problems.append(f"{comp}: {key} differs from the exported tensor")
        unused = set(stored) - used
        if unused:
            problems.append(
                f"{comp}: {len(unused)} exported tensors not loaded (e.g. {sorted(unused)[:2]})"
            )
    for prompt, ids in expected["input_ids"].items():
        got = pipe.tokenizer(prompt).input_ids
        if got != ids:
            problems.append(f"tokenizer: {prompt!r} -> {got}, expected {ids}")
    pred = pipe.scheduler.config.prediction_type
    if pred != expected["prediction_type"]:
        problems.append(f"scheduler prediction_type {pred}, expected {expected['prediction_type']}")
    print(f"{folder.name}: {type(pipe.tokenizer).__name__}, {n} tensors compared")
    for p in problems[:20]:
        print("  FAIL", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
