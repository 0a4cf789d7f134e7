"""int8: symmetric weight-only quantization, one float32 scale per output channel (W8A16)."""

from __future__ import annotations

import torch

from llmctl.agent.engine.models.linear import DenseLinear, Int8Linear
from llmctl.agent.engine.models.llama import LINEAR_NAMES, replace_linears_in_layer
from llmctl.kernels.quant_reference import quantize_int8_per_channel


def int8_linear(dense: DenseLinear) -> Int8Linear:
    w_int8, scales = quantize_int8_per_channel(dense.weight.data)
    with torch.device("meta"):
        layer = Int8Linear(dense.in_features, dense.out_features, bias=dense.bias is not None)
    layer.weight, layer.weight_scale = w_int8, scales
    layer.bias = dense.bias
    return layer


def quantize_layer(layer) -> None:
    replace_linears_in_layer(layer, lambda name, dense: int8_linear(dense), LINEAR_NAMES)
