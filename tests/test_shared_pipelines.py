"""The guard on session-shared test pipelines (tests/_tiny.shared_pipeline, conftest.py)."""

from __future__ import annotations

import copy

import torch

from tests._tiny import fingerprint, shared_tiny


def test_one_pipeline_per_arguments() -> None:
    assert shared_tiny("sd1", seed=0, max_length=8) is shared_tiny("sd1", seed=0, max_length=8)
    assert shared_tiny("sd1", seed=0, max_length=8) is not shared_tiny("sd1", seed=1, max_length=8)


def test_fingerprint_sees_weights_modes_hooks_and_processors() -> None:
    pipe = copy.deepcopy(shared_tiny("sd1", seed=0, max_length=8))  # changed below: a copy
    before = fingerprint(pipe)
    assert fingerprint(copy.deepcopy(pipe)) == before
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k
    kept = layer.weight[0, 0].item()
    with torch.no_grad():
        layer.weight[0, 0] = torch.nextafter(layer.weight[0, 0], torch.tensor(float("inf")))
    assert fingerprint(pipe) != before  # one weight moved by one ulp
    with torch.no_grad():
        layer.weight[0, 0] = kept
    assert fingerprint(pipe) == before
    pipe.unet.train()
    assert fingerprint(pipe) != before
    pipe.unet.eval()
    handle = pipe.unet.register_forward_pre_hook(lambda *a: None)
    assert fingerprint(pipe) != before
    handle.remove()
    flag = layer.weight.requires_grad
    layer.weight.requires_grad_(not flag)
    assert fingerprint(pipe) != before
    layer.weight.requires_grad_(flag)
    pipe.unet.set_attn_processor(pipe.unet.attn_processors)  # same classes: no change
    assert fingerprint(pipe) == before
    from diffusers.models.attention_processor import AttnProcessor

    pipe.unet.set_attn_processor(AttnProcessor())
    changed = any(
        type(p).__qualname__ != "AttnProcessor"
        for p in shared_tiny("sd1", seed=0, max_length=8).unet.attn_processors.values()
    )
    assert (fingerprint(pipe) != before) == changed
