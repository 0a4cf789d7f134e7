"""The model's linear layers: dense, W8A16 (int8 per output channel) and W4A16 (AWQ GEMM layout).

Each holds only its own format's tensors (a quantized layer keeps no full-precision copy) and reaches
the matmul through `kernels`. Tensor names follow the checkpoints: `weight`/`bias` (dense),
`weight` int8 + `weight_scale` (int8), `qweight`/`qzeros`/`scales` (AWQ).
"""

from __future__ import annotations

import torch
from torch import nn

from llmctl import kernels


class DenseLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))  # [out, in]
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.linear(x, self.weight, self.bias)

    def prepack(self) -> None:
        """Swap the weight for the layout the CPU matmul reads fastest (same values; not saveable)."""
        packed = kernels.prepack_linear_weight(self.weight.data)
        if packed is not self.weight.data:
            del self.weight
            self.register_buffer("weight", packed, persistent=False)

    def weight_bytes(self) -> int:
        return self.in_features * self.out_features * self.weight.element_size()


class Int8Linear(nn.Module):
    """y = x @ (weight * weight_scale[:, None]).T + bias; symmetric int8, one float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.w8a16_linear(x, self.weight, self.weight_scale, self.bias)

    def weight_bytes(self) -> int:
        return self.weight.numel() + self.weight_scale.numel() * 4


class AWQLinear(nn.Module):
    """4-bit asymmetric weights, groups of `group_size` input channels, AutoAWQ GEMM packing.

    qweight int32 [in, out/8], qzeros int32 [in/g, out/8], scales float16 [in/g, out].
    """

    def __init__(self, in_features: int, out_features: int, group_size: int, bias: bool = False):
        super().__init__()
        if in_features % group_size or out_features % 8:
            raise ValueError(
                f"a {in_features}->{out_features} layer cannot take 4-bit group size {group_size}: the group "
                "size must divide the input width and the output width must be a multiple of 8"
            )
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("qweight", torch.empty(in_features, out_features // 8, dtype=torch.int32))
        self.register_buffer("qzeros", torch.empty(groups, out_features // 8, dtype=torch.int32))
        self.register_buffer("scales", torch.empty(groups, out_features, dtype=torch.float16))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.awq_linear(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias)

    def weight_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.qweight, self.qzeros, self.scales))


QUANTIZED_LINEARS = (Int8Linear, AWQLinear)
LINEARS = (DenseLinear, Int8Linear, AWQLinear)


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes of the decoder's linear-layer weights (and their scales/zeros), embeddings and head excluded."""
    return sum(m.weight_bytes() for m in model.modules() if isinstance(m, LINEARS))


def linear_params(model: nn.Module) -> int:
    """Weights in the decoder's linear layers (in x out each): what an fp16 copy would store at 2 bytes."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, LINEARS))


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds: what quantization must shrink for real."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    total = 0
    for t in tensors.values():
        if t.is_mkldnn:
            total += t.numel() * t.element_size()
        else:
            total += t.untyped_storage().nbytes()
    return total
