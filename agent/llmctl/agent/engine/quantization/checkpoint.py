"""`llmctl quantize`: a float checkpoint in, a quantized Hugging Face-style folder out.

The folder holds model.safetensors (HF tensor names; AWQ layers as q_proj.qweight / .qzeros / .scales,
int8 layers as .weight int8 + .weight_scale), config.json with a `quantization_config`, and the source's
tokenizer and chat template, so `llmctl serve DIR` and the loader take it like any model folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmctl.agent.engine.errors import InvalidRequest
from llmctl.agent.engine.quantization import QuantSpec

# Everything a model folder carries besides its weights and config.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


@dataclass
class QuantizeReport:
    out: Path
    spec: QuantSpec
    float_linear_bytes: int
    linear_weight_bytes: int
    calibration_tokens: int


def quantize_to_folder(
    model_ref: str, method: str, out: str | Path, *, calib: str | Path | None = None, calib_samples: int | None = None,
    group_size: int | str | None = "auto", dtype: str = "float32", progress=None,
) -> QuantizeReport:
    """Load `model_ref` in `dtype`, quantize it, write the folder. progress(stage, done, total)."""
    from safetensors.torch import save_file

    from llmctl.agent.engine import loader
    from llmctl.agent.engine.engine import TORCH_DTYPES
    from llmctl.agent.engine.models.linear import linear_weight_bytes
    from llmctl.agent.engine.models.llama import build_model, engine_to_hf_state_dict
    from llmctl.agent.engine.quantization import calibration, checkpoint_spec, quantize_model, resolve_spec

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InvalidRequest(f"output folder {out} exists and is not empty")
    if dtype not in TORCH_DTYPES:
        raise InvalidRequest(f"dtype must be one of {', '.join(TORCH_DTYPES)}, got {dtype!r}")
    folder = loader.resolve_model(model_ref)
    hf_config = loader.load_model_config(folder)
    if checkpoint_spec(hf_config) is not None:
        raise InvalidRequest(f"{model_ref} is already quantized; quantize a float checkpoint")
    spec = resolve_spec(method, group_size, hf_config)
    # Read the calibration text before the (slow) model load, so a bad file fails at once.
    text = calibration.read_text(calib or calibration.DEFAULT_CALIBRATION) if spec.method == "awq" else None
    tokenizer = loader.load_tokenizer(folder)
    torch_dtype = TORCH_DTYPES[dtype]
    model = build_model(hf_config, loader.load_state_dict(folder, torch_dtype), torch_dtype, "cpu")
    float_bytes = linear_weight_bytes(model)
    acts, ntok = None, 0
    if text is not None:
        windows = calibration.token_windows(
            tokenizer, text, calib_samples or calibration.DEFAULT_SAMPLES, calibration.DEFAULT_SEQ_LEN
        )
        if progress:
            progress("calibrating", 0, 1)
        acts = calibration.collect_activations(model, windows)
        ntok = acts.num_tokens
        if progress:
            progress("calibrating", 1, 1)
    quantize_model(model, spec, acts, progress=lambda d, t: progress and progress("quantizing", d, t))
    tensors = engine_to_hf_state_dict(model.state_dict(), hf_config)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((Path(folder) / "config.json").read_text())
    config["quantization_config"] = spec.hf_config()
    config["torch_dtype"] = dtype
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in SIDE_FILES:
        if (Path(folder) / name).is_file():
            shutil.copy2(Path(folder) / name, out / name)
    return QuantizeReport(out, spec, float_bytes, linear_weight_bytes(model), ntok)
