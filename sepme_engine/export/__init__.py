"""Export a composition (base pipeline + per-layer deltas) or a set of increments.

- `single_file.export_single_file`: one LDM `.safetensors` for A1111 / ComfyUI, streamed tensor
  by tensor, with `modelspec.*`, `sepme.configs` and the caller's provenance metadata.
- `diffusers_dir.export_diffusers`: a `save_pretrained`-layout pipeline folder.
- `lora.export_lora`: the increments as one kohya-format LoRA, exact or rank-truncated.
- `run.export`: the store-aware entry point the CLI calls.

Every output is complete or absent (temporary name in the destination folder, fsync, rename).
Importing this package imports nothing heavy.
"""
