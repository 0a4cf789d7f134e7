"""The model's linear layers: dense, W8A16 (int8 per output channel) and W4A16 (AWQ GEMM layout).

Each holds only its own format's tensors (a quantized layer keeps no full-precision copy) and reaches
the matmul through `kernels`. Tensor names follow the checkpoints: `weight`/`bias` (dense),
`weight` int8 + `weight_scale` (int8), `qweight`/`qzeros`/`scales` (AWQ).

`prepack()` (called by finalize, for serving only) converts a CPU layer once to the layout its CPU kernel
reads fastest. CUDA layers keep the stored layout, which the Triton kernels read. A prepacked AWQ layer
no longer holds its stored tensors, so it refuses state_dict(): checkpoints are written before finalize.
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

    def fused_args(self) -> kernels.LinearArgs | None:
        """This layer for kernels.decoder_layers (None: it cannot run there)."""
        if self.weight.dim() == 3:  # llmctl's blocked bf16 layout
            bias = _bf16_bias(self.bias)
            return kernels.LinearArgs(self.weight, None, bias, kernels.LINEAR_BF16)
        kind = kernels.LINEAR_ONEDNN if self.weight.is_mkldnn else kernels.LINEAR_DENSE
        return kernels.LinearArgs(self.weight, None, self.bias, kind)


def _bf16_bias(bias: torch.Tensor | None) -> torch.Tensor | None:
    """A layer's bias as llmctl's C++ linears read it (kernels.LinearArgs)."""
    return None if bias is None else bias.to(torch.bfloat16).contiguous()


def _packs_for_cpu(t: torch.Tensor) -> bool:
    """Whether prepack converts this layer: CPU tensors, unless LLMCTL_KERNELS forces a backend."""
    return t.device.type == "cpu" and kernels.BACKEND == "auto"


class Int8Linear(nn.Module):
    """y = x @ (weight * weight_scale[:, None]).T + bias; symmetric int8, one float32 scale per output row."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=torch.float32))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        # After prepack on CPU: the scales the CPU kernel reads [out] (torch's: in the activation dtype;
        # llmctl's: fp32, with `weight` reordered into its blocked layout).
        self.register_buffer("packed_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_scale is not None:
            return kernels.w8a16_linear_packed(x, self.weight, self.packed_scale, self.bias)
        return kernels.w8a16_linear(x, self.weight, self.weight_scale, self.bias)

    def prepack(self, dtype: torch.dtype) -> None:
        """For `dtype` activations on CPU. For torch's kernel the int8 [out, in] weight already is the layout
        and stays as stored; only the scales are added in `dtype` (out values, not a weight copy). llmctl's
        kernel (bf16 on AVX512-BF16 or AVX2) reorders the weight in place into blocks (a 3-D weight; no copy kept),
        so, like a prepacked AWQ layer, the layer then refuses state_dict()."""
        if not (_packs_for_cpu(self.weight) and kernels.w8a16_packable(self.in_features)) or self.weight.dim() == 3:
            return
        self.weight, self.packed_scale = kernels.prepack_w8a16(self.weight, self.weight_scale, dtype)
        if self.weight.dim() == 3:
            self.register_state_dict_pre_hook(_refuse_packed_state_dict)

    def fused_args(self) -> kernels.LinearArgs | None:
        """This layer for kernels.decoder_layers: only in llmctl's layout (prepacked, bf16 on AVX512-BF16 or AVX2)."""
        if self.weight.dim() != 3:
            return None
        bias = _bf16_bias(self.bias)
        return kernels.LinearArgs(self.weight, self.packed_scale, bias, kernels.LINEAR_INT8)

    def weight_bytes(self) -> int:
        scale = self.packed_scale
        extra = 0 if scale is None else scale.numel() * scale.element_size()
        return self.weight.numel() + self.weight_scale.numel() * 4 + extra


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
        # After prepack on CPU, in place of the three above: torch's int4pack layout, uint8 [out, in/2],
        # and (scale, zero) per group and output [in/g, out, 2] in the activation dtype; or llmctl's
        # (bf16 on AVX512-BF16 or AVX2): uint8 [out/16, in/2, 16] and AWQ's scales and zeros [2, in/g, out] fp16.
        self.register_buffer("packed_weight", None, persistent=False)
        self.register_buffer("scales_and_zeros", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed_weight is not None:
            return kernels.awq_linear_packed(
                x, self.packed_weight, self.scales_and_zeros, self.group_size, self.bias
            )
        return kernels.awq_linear(x, self.qweight, self.qzeros, self.scales, self.group_size, self.bias)

    def prepack(self, dtype: torch.dtype) -> None:
        """For `dtype` activations on CPU: the stored tensors are replaced (not copied) by the kernel's."""
        if self.packed_weight is not None or not _packs_for_cpu(self.qweight):
            return
        if not kernels.awq_packable(self.in_features, self.out_features, self.group_size):
            return  # a width torch's kernel cannot take: the layer keeps the (slow) reference path
        self.packed_weight, self.scales_and_zeros = kernels.prepack_awq(
            self.qweight, self.qzeros, self.scales, self.group_size, dtype
        )
        self.qweight = self.qzeros = self.scales = None
        self.register_state_dict_pre_hook(_refuse_packed_state_dict)

    def fused_args(self) -> kernels.LinearArgs | None:
        """This layer for kernels.decoder_layers: only in llmctl's layout (prepacked, bf16 on AVX512-BF16 or AVX2)."""
        if self.packed_weight is None or self.packed_weight.dim() != 3:
            return None
        bias = _bf16_bias(self.bias)
        return kernels.LinearArgs(self.packed_weight, self.scales_and_zeros, bias, kernels.LINEAR_INT4,
                                  self.group_size)

    def weight_bytes(self) -> int:
        tensors = (self.qweight, self.qzeros, self.scales, self.packed_weight, self.scales_and_zeros)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _refuse_packed_state_dict(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    raise RuntimeError(
        f"{type(module).__name__} {prefix.rstrip('.') or '(root)'} was prepacked for the CPU kernel (finalize) and no "
        "longer holds the checkpoint's tensors; save a quantized model before finalize"
    )


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
    total, storages = 0, {}
    for t in tensors.values():
        if t.is_mkldnn:
            total += t.numel() * t.element_size()
        else:  # a storage shared by several tensors (the packed weights' huge-page mapping) counts once
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return total + sum(storages.values())
