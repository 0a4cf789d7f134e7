"""fp8 (e4m3) KV cache scales per layer and KV head, calibrated on text.

scale = amax / 448 maps each head's largest calibration value to e4m3's largest finite value, so the
cache uses the format's whole range (values outside it clamp on write). For K the amax is taken over
the RoPE pairs' norms: a rotation keeps each pair's norm, so the bound holds at every position.
"""

from __future__ import annotations

import torch

from llmctl.kernels.reference import FP8_E4M3_MAX


@torch.no_grad()
def calibrate_fp8_scales(
    model, windows: list[list[int]], *, block_size: int = 16, device: str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k_scale [KVH], v_scale [KVH]) float32."""
    from llmctl.agent.engine.quantization.calibration import run_windows

    amax = [[None, None] for _ in model.layers]

    def hook(i: int, attn):
        def record(module, args, output):
            t = output.shape[0]
            _, k, v = output.float().split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
            k = k.reshape(t, attn.kv_heads, attn.head_dim)
            half = attn.head_dim // 2
            k_norm = (k[..., :half].pow(2) + k[..., half:].pow(2)).sqrt()  # neox pairs (i, i + D/2)
            k_max = k_norm.amax(dim=(0, 2))
            v_max = v.reshape(t, attn.kv_heads, attn.head_dim).abs().amax(dim=(0, 2))
            old_k, old_v = amax[i]
            amax[i] = [k_max if old_k is None else torch.maximum(old_k, k_max),
                       v_max if old_v is None else torch.maximum(old_v, v_max)]
        return record

    handles = [layer.self_attn.qkv_proj.register_forward_hook(hook(i, layer.self_attn))
               for i, layer in enumerate(model.layers)]
    try:
        run_windows(model, windows, block_size, device)
    finally:
        for h in handles:
            h.remove()
    tiny = torch.finfo(torch.float32).tiny
    return [((k / FP8_E4M3_MAX).clamp(min=tiny).float(), (v / FP8_E4M3_MAX).clamp(min=tiny).float())
            for k, v in amax]
