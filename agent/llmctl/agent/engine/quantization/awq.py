"""4-bit weights in the AutoAWQ GEMM layout: round-to-nearest (rtn4) and activation-aware scaling (awq).

AWQ, as implemented here: for each group of linears that share an input (qkv; o; gate/up; down), take
the mean magnitude of each input channel over the calibration tokens, and grid-search the exponent
r in [0, 1) of per-channel scales s = mean|x|^r that minimises the group's output error
||x W^T - (x / s) Q(W * s)^T||^2 on sampled calibration rows. Salient channels (large activations)
get their weights scaled up before rounding, so they lose less precision. The scales are folded into
the op that produces the group's input (the RMSNorm weight, v_proj's rows, up_proj's rows), so the
float function is unchanged and the quantized model carries no extra per-call multiply.
"""

from __future__ import annotations

import math

import torch

from llmctl.agent.engine.models.linear import AWQLinear, DenseLinear
from llmctl.agent.engine.models.llama import LINEAR_NAMES, replace_linears_in_layer
from llmctl.kernels.quant_reference import pack_awq

GRID = 20
MAX_Q = 15


def quantize_4bit(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """w [out, in] -> (q [out, in] int32 in 0..15, zeros [out, in/g] int32, scales [out, in/g] float16).

    Asymmetric min/max per group; scales are rounded to float16 first so the codes are computed against
    exactly the scales that are stored.
    """
    out, k = w.shape
    wg = w.float().reshape(out, k // group_size, group_size)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scales = ((hi - lo).clamp(min=1e-5) / MAX_Q).half()
    s = scales.float()
    zeros = torch.round(-lo / s).clamp(0, MAX_Q)
    q = (torch.round(wg / s[..., None]) + zeros[..., None]).clamp(0, MAX_Q)
    return q.reshape(out, k).to(torch.int32), zeros.to(torch.int32), scales


def fake_quantize_4bit(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """What the 4-bit weights dequantize to, [out, in] float32."""
    q, z, s = quantize_4bit(w, group_size)
    out, k = w.shape
    deq = (q.reshape(out, -1, group_size) - z[..., None]).float() * s.float()[..., None]
    return deq.reshape(out, k)


def awq_linear(dense: DenseLinear, group_size: int) -> AWQLinear:
    q, z, s = quantize_4bit(dense.weight.data, group_size)
    qweight, qzeros = pack_awq(q.T.contiguous(), z.T.contiguous())
    with torch.device("meta"):
        layer = AWQLinear(dense.in_features, dense.out_features, group_size, bias=dense.bias is not None)
    layer.qweight, layer.qzeros, layer.scales = qweight, qzeros, s.T.contiguous()
    layer.bias = dense.bias
    return layer


def quantize_layer(layer, group_size: int) -> None:
    replace_linears_in_layer(layer, lambda name, dense: awq_linear(dense, group_size), LINEAR_NAMES)


def search_scales(
    x: torch.Tensor, mean_abs: torch.Tensor, w: torch.Tensor, group_size: int, tie: tuple[int, int, int] | None = None
) -> tuple[torch.Tensor, float]:
    """Best per-channel scales for input rows x [N, in] feeding weight w [out, in].

    Candidates s = mean|x|^r / mean|w|^(1-r) for r on a grid (the weight term keeps channels whose
    weights are already large from being scaled further). tie = (kv_heads, group, head_dim): the input
    is attention output whose q heads share a v head, so channels of one kv head share a scale and the
    result is per kv channel [kv_heads * head_dim]. Returns (scales, chosen r).
    """
    x, w = x.float(), w.float()
    ref = x @ w.T
    # Mean |w| per input channel, each weight first normalised by its group's max (as AutoAWQ does).
    wg = w.abs().view(w.shape[0], -1, group_size)
    w_mean = (wg / wg.amax(-1, keepdim=True).clamp(min=1e-8)).view_as(w).mean(0)
    if tie is not None:
        kvh, group, d = tie
        mean_abs = mean_abs.view(kvh, group, d).mean(1).reshape(-1)
        w_mean = w_mean.view(kvh, group, d).mean(1).reshape(-1)
    best_err, best_s, best_r = math.inf, None, 0.0
    for i in range(GRID):
        r = i / GRID
        s = mean_abs.clamp(min=1e-4).pow(r) / w_mean.clamp(min=1e-4).pow(1 - r)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        full = s if tie is None else s.view(kvh, 1, d).expand(kvh, group, d).reshape(-1)
        wq = fake_quantize_4bit(w * full, group_size) / full
        err = (x @ wq.T - ref).pow(2).mean().item()
        if err < best_err:
            best_err, best_s, best_r = err, s, r
    return best_s, best_r


CLIP_GRID = 20
CLIP_MAX_SHRINK = 0.5
CLIP_ROWS = 256
CLIP_CHUNK = 256


def search_clip(x: torch.Tensor, w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per (output row, group) clipping bound [out, in/g] minimising that group's partial output error.

    Shrinking a group's range below its largest weight rounds the bulk of the weights more finely at
    the cost of the few outliers; x [N, in] says which trade is worth it.
    """
    x = x.float()[:CLIP_ROWS]
    out, k = w.shape
    groups = k // group_size
    xg = x.view(x.shape[0], groups, group_size)  # [N, G, g]
    bounds = []
    for start in range(0, out, CLIP_CHUNK):
        wc = w[start:start + CLIP_CHUNK].float().view(-1, groups, group_size)  # [C, G, g]
        ref = torch.einsum("ngk,cgk->ncg", xg, wc)
        top = wc.abs().amax(-1)  # [C, G]
        best_err = torch.full_like(top, math.inf)
        best = top.clone()
        for i in range(int(CLIP_GRID * CLIP_MAX_SHRINK)):
            bound = top * (1 - i / CLIP_GRID)
            clipped = wc.clamp(-bound[..., None], bound[..., None])
            q = fake_quantize_4bit(clipped.view(wc.shape[0], k), group_size).view_as(wc)
            err = (torch.einsum("ngk,cgk->ncg", xg, q) - ref).pow(2).mean(0)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, bound, best)
        bounds.append(best)
    return torch.cat(bounds)


def apply_clip(w: torch.Tensor, bound: torch.Tensor, group_size: int) -> None:
    """Clamp w [out, in] in place to +-bound per (row, group)."""
    wg = w.view(w.shape[0], -1, group_size)
    b = bound.to(w.dtype)[..., None]
    torch.maximum(torch.minimum(wg, b), -b, out=wg)


@torch.no_grad()
def search_and_fold(model, index: int, acts, group_size: int) -> dict[str, float]:
    """Search the four groups of layer `index` and fold the scales in; returns the chosen exponents.

    Order matters: o and down fold into rows of qkv and gate/up, so they go first and the qkv and
    gate/up searches see the weights they will actually quantize.
    """
    layer = model.layers[index]
    attn, mlp = layer.self_attn, layer.mlp
    chosen = {}
    folded: dict[str, torch.Tensor] = {}  # what each linear's input is now divided by
    group = attn.heads // attn.kv_heads

    # o_proj <- v rows of qkv_proj (per kv channel; shared by the q heads of its group).
    s, chosen["o"] = search_scales(
        acts.rows["self_attn.o_proj"], acts.mean_abs["self_attn.o_proj"], attn.o_proj.weight, group_size,
        tie=(attn.kv_heads, group, attn.head_dim),
    )
    v = slice(attn.q_size + attn.kv_size, attn.q_size + 2 * attn.kv_size)
    attn.qkv_proj.weight[v] /= s.to(attn.qkv_proj.weight.dtype)[:, None]
    if attn.qkv_proj.bias is not None:
        attn.qkv_proj.bias[v] /= s.to(attn.qkv_proj.bias.dtype)
    full = s.view(attn.kv_heads, 1, attn.head_dim).expand(attn.kv_heads, group, attn.head_dim).reshape(-1)
    attn.o_proj.weight *= full.to(attn.o_proj.weight.dtype)[None, :]
    folded["self_attn.o_proj"] = full

    # down_proj <- up rows of gate_up_proj (silu(gate) * up is linear in up).
    s, chosen["down"] = search_scales(
        acts.rows["mlp.down_proj"], acts.mean_abs["mlp.down_proj"], mlp.down_proj.weight, group_size
    )
    mlp.gate_up_proj.weight[mlp.intermediate:] /= s.to(mlp.gate_up_proj.weight.dtype)[:, None]
    mlp.down_proj.weight *= s.to(mlp.down_proj.weight.dtype)[None, :]
    folded["mlp.down_proj"] = s

    # qkv_proj <- input_layernorm; gate_up_proj <- post_attention_layernorm.
    for name, norm, lin in (
        ("qkv", "input_layernorm", attn.qkv_proj),
        ("gate_up", "post_attention_layernorm", mlp.gate_up_proj),
    ):
        key = "self_attn.qkv_proj" if name == "qkv" else "mlp.gate_up_proj"
        s, chosen[name] = search_scales(acts.rows[key], acts.mean_abs[key], lin.weight, group_size)
        getattr(layer, norm).data /= s.to(lin.weight.dtype)
        lin.weight *= s.to(lin.weight.dtype)[None, :]
        folded[key] = s

    # Clipping, on the scaled weights and the inputs they now see (x / s). q and k rows are left
    # unclipped: their errors pass through the softmax, where outliers matter most (AutoAWQ does the same).
    for key, lin, rows in (
        ("self_attn.qkv_proj", attn.qkv_proj, slice(attn.q_size + attn.kv_size, None)),
        ("self_attn.o_proj", attn.o_proj, slice(None)),
        ("mlp.gate_up_proj", mlp.gate_up_proj, slice(None)),
        ("mlp.down_proj", mlp.down_proj, slice(None)),
    ):
        x = acts.rows[key] / folded[key].to(acts.rows[key].dtype)
        w = lin.weight.data[rows]
        apply_clip(w, search_clip(x, w, group_size), group_size)
    return chosen
