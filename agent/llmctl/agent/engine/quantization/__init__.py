"""Weight quantization: int8 (W8A16 per output channel), awq and rtn4 (4-bit, AutoAWQ GEMM layout).

A handler with two verbs: *quantize* a loaded float model in place (`quantize_model`, offline by
`llmctl quantize` or at load time by `--quantization`), and *prepare for runtime* a checkpoint that is
already quantized (`QuantSpec.from_hf_config` + `linear_factory`, which build_model uses to lay out the
quantized layers before the tensors are assigned). The format comes from the checkpoint's
`quantization_config`, never from file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmctl.agent.engine.errors import InvalidRequest, UnsupportedModel

METHODS = ("int8", "awq", "rtn4")
GROUP_SIZES = (128, 64, 32)
INT8_QUANT_METHOD = "llmctl_int8"


@dataclass(frozen=True)
class QuantSpec:
    """What a model's decoder linears are stored as. group_size: 4-bit methods only."""

    method: str
    group_size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidRequest(f"quantization must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method != "int8" and self.group_size not in GROUP_SIZES:
            raise InvalidRequest(f"group size must be one of {GROUP_SIZES}, got {self.group_size}")

    @property
    def bits(self) -> int:
        return 8 if self.method == "int8" else 4

    def hf_config(self) -> dict[str, Any]:
        """The `quantization_config` written into config.json (Hugging Face's convention for AWQ)."""
        if self.method == "int8":
            return {"quant_method": INT8_QUANT_METHOD, "bits": 8, "symmetric": True, "granularity": "channel"}
        return {
            "quant_method": "awq",
            "bits": 4,
            "group_size": self.group_size,
            "zero_point": True,
            "version": "gemm",
            "modules_to_not_convert": None,
            # Which search produced the 4-bit weights; loaders that do not know the key ignore it.
            "llmctl_method": self.method,
        }

    @classmethod
    def from_hf_config(cls, qc: Any) -> QuantSpec:
        qc = qc if isinstance(qc, dict) else qc.to_dict()
        method = qc.get("quant_method")
        if method == INT8_QUANT_METHOD:
            return cls("int8")
        if method == "awq":
            version = str(qc.get("version", "gemm")).lower()
            if qc.get("bits", 4) != 4 or not qc.get("zero_point", True) or version != "gemm":
                raise UnsupportedModel(
                    f"AWQ checkpoints must be 4-bit, zero-point, GEMM layout; this one says bits={qc.get('bits')}"
                    f" zero_point={qc.get('zero_point')} version={version}"
                )
            if qc.get("modules_to_not_convert"):
                raise UnsupportedModel("AWQ checkpoints with modules_to_not_convert are not supported")
            return cls(qc.get("llmctl_method", "awq") if qc.get("llmctl_method") in ("awq", "rtn4") else "awq",
                       qc.get("group_size"))
        raise UnsupportedModel(
            f"quantization_config.quant_method {method!r} is not supported (awq, {INT8_QUANT_METHOD})"
        )


def checkpoint_spec(hf_config) -> QuantSpec | None:
    """The quantization a checkpoint's config.json declares, or None for a float checkpoint."""
    qc = getattr(hf_config, "quantization_config", None)
    return None if not qc else QuantSpec.from_hf_config(qc)


def input_widths(hf_config) -> dict[str, int]:
    """Input features of each decoder linear: what a 4-bit group size has to divide."""
    head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
    return {
        "self_attn.qkv_proj": hf_config.hidden_size,
        "self_attn.o_proj": hf_config.num_attention_heads * head_dim,
        "mlp.gate_up_proj": hf_config.hidden_size,
        "mlp.down_proj": hf_config.intermediate_size,
    }


def resolve_spec(method: str, group_size: int | str | None, hf_config) -> QuantSpec:
    """The spec for quantizing this model: `auto` group size = 128 where it divides every input width,
    else the largest of 64 / 32 that does (SmolLM2's 576 gets 64)."""
    if method not in METHODS:
        raise InvalidRequest(f"quantization method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "int8":
        return QuantSpec("int8")
    widths = input_widths(hf_config)
    if group_size in (None, "auto"):
        for g in GROUP_SIZES:
            if all(w % g == 0 for w in widths.values()):
                return QuantSpec(method, g)
        raise InvalidRequest(f"no 4-bit group size in {GROUP_SIZES} divides every layer width {widths}")
    try:
        g = int(group_size)
    except ValueError as exc:
        raise InvalidRequest(f"group size must be auto, 32, 64 or 128, got {group_size!r}") from exc
    bad = {name: w for name, w in widths.items() if w % g}
    if bad:
        raise InvalidRequest(
            f"group size {g} does not divide the input width of {', '.join(f'{n} ({w})' for n, w in bad.items())};"
            " use --group-size auto"
        )
    return QuantSpec(method, g)


def linear_factory(spec: QuantSpec):
    """make_linear for build_model: the empty quantized layer a checkpoint's tensors load into."""
    from llmctl.agent.engine.models.linear import AWQLinear, Int8Linear

    def make(name: str, dense):
        bias = dense.bias is not None
        if spec.method == "int8":
            return Int8Linear(dense.in_features, dense.out_features, bias)
        if dense.in_features % spec.group_size:
            raise UnsupportedModel(
                f"quantization_config group_size {spec.group_size} does not divide {name}'s input width "
                f"{dense.in_features}"
            )
        return AWQLinear(dense.in_features, dense.out_features, spec.group_size, bias)

    return make


def quantize_model(model, spec: QuantSpec, calibration=None, progress=None) -> None:
    """Quantize a loaded float model's decoder linears in place; the float weights are released.

    awq needs `calibration` (ActivationStats from calibration.collect_activations); int8 and rtn4 do not.
    `progress(done_layers, total_layers)` is called after each layer.
    """
    from llmctl.agent.engine.quantization import awq, int8

    if spec.method == "awq" and calibration is None:
        raise InvalidRequest("awq needs calibration activations")
    for i, layer in enumerate(model.layers):
        if spec.method == "int8":
            int8.quantize_layer(layer)
        else:
            if spec.method == "awq":
                awq.search_and_fold(model, i, calibration.layers[i], spec.group_size)
                calibration.layers[i] = None  # free the sampled rows as soon as they are used
            awq.quantize_layer(layer, spec.group_size)
        if progress is not None:
            progress(i + 1, len(model.layers))
