"""Base models: detect, configure and load SD 1.x / 2.x bases offline; LDM <-> diffusers keys.

- `detect`: `inspect_source(...) -> SourceInfo`, `KNOWN_BASES` (reads headers/configs only; no torch).
- `load`: `load_pipeline(...) -> StableDiffusionPipeline` (imports torch).
- `arch`: `ARCHS`, `cross_attention_kv(unet)`, `resolve_device(device)`.
- `configs`: shipped configs, `pipeline_configs(pipe)`, `write_config_dir(configs, dest)`.
- `ldm_keys`: the diffusers -> A1111/ComfyUI key map used by import tests and the exporter.
- `tokenizer`: the CLIP tokenizer built from the shipped BPE file.

Nothing is imported here, so `import sepme_engine.models` stays cheap.
"""
