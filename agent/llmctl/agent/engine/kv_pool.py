"""The KV block pool's tensors, per layer: K and V codes plus their scales when quantized."""

from __future__ import annotations

from dataclasses import dataclass

import torch

KV_TORCH_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}


@dataclass
class KVLayer:
    k: torch.Tensor  # [num_blocks, block_size, KVH, D]
    v: torch.Tensor
    k_scale: torch.Tensor | None = None
    """int8: float32 [num_blocks, block_size, KVH] per (token, head); fp8: float32 [KVH] per head."""
    v_scale: torch.Tensor | None = None

    def scales(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the kernels: none at all for an unquantized pool."""
        if self.k_scale is None:
            return {}
        return {"k_scale": self.k_scale, "v_scale": self.v_scale}


def pool_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    return KV_TORCH_DTYPES.get(kv_cache_dtype, model_dtype)


def kv_bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """K and V of one token in every layer, scales included (int8 stores a float32 per token and head)."""
    per_head = head_dim * torch.tensor([], dtype=dtype).element_size() + (4 if dtype == torch.int8 else 0)
    return 2 * num_layers * kv_heads * per_head


def allocate(
    num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
    device: str, fp8_scales: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[KVLayer]:
    """fp8_scales: per layer (k_scale [KVH], v_scale [KVH]) from calibration; default unit scales."""
    shape = (num_blocks, block_size, kv_heads, head_dim)
    layers = []
    for i in range(num_layers):
        layer = KVLayer(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        if dtype == torch.int8:
            layer.k_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
            layer.v_scale = torch.zeros(shape[:-1], dtype=torch.float32, device=device)
        elif dtype == torch.float8_e4m3fn:
            if fp8_scales is not None:
                layer.k_scale, layer.v_scale = (s.to(device=device, dtype=torch.float32) for s in fp8_scales[i])
            else:
                # Unit per-head scales (vLLM's default without calibration); the engine calibrates
                # them on text at load (agent/engine/quantization/kv.py).
                layer.k_scale = torch.ones(kv_heads, dtype=torch.float32, device=device)
                layer.v_scale = torch.ones(kv_heads, dtype=torch.float32, device=device)
        layers.append(layer)
    return layers
