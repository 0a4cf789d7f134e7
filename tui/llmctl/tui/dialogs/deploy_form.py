"""`d`: a deployment's model and engine flags, checked with the engine's own EngineConfig before the form
closes, so a typo is fixed here instead of becoming a revision that cannot start.

Opened on an existing deployment, it starts from that deployment's current config and keeps the keys the
form does not show (device, served name, ...), so only what was edited changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Select, Static

from llmctl.agent.engine.config import DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, EngineConfig
from llmctl.agent.engine.errors import InvalidRequest
from llmctl.controlplane.errors import InvalidArgument
from llmctl.controlplane.proto import llmctl_pb2 as pb

# (EngineConfig field, label, hint) of the whole-number fields; an empty optional one means "default".
NUMBERS = (
    ("max_num_seqs", "max seqs", ""),
    ("max_num_batched_tokens", "batched tokens", ""),
    ("max_model_len", "max model len", "default: the model's"),
    ("num_kv_blocks", "KV blocks", "default: from KV memory"),
    ("kv_cache_memory", "KV memory bytes", "default: 1 GiB on CPU"),
    ("num_threads", "CPU threads", "default: torch's choice"),
)
REQUIRED = {"max_num_seqs", "max_num_batched_tokens"}
CHOICES = (
    ("dtype", "dtype", DTYPES),
    ("kv_cache_dtype", "KV cache dtype", KV_CACHE_DTYPES),
    ("quantization", "quantization", ("none", *QUANTIZATIONS)),
    ("quantization_group_size", "4-bit group size", ("auto", 32, 64, 128)),
    ("block_size", "block size", (8, 16, 32, 64)),
)
# The choice that stands for "not set" (None in EngineConfig), per field.
UNSET_CHOICE = {"quantization": "none", "quantization_group_size": "auto"}
SWITCHES = (("enable_prefix_caching", "prefix caching"), ("enable_chunked_prefill", "chunked prefill"))


@dataclass(frozen=True)
class DeploySpec:
    """A validated deploy request."""

    name: str
    model: str
    engine_config: dict[str, Any]
    replicas: int | None
    """None: keep the deployment's count (1 for a new one)."""


class FormError(ValueError):
    """A field the user must fix; the message says which and how."""


def check_deployment_name(name: str) -> str:
    from llmctl.controlplane.services import check_name

    try:
        return check_name("deployment", name)
    except InvalidArgument as e:
        raise FormError(e.message) from None


def _whole(field: str, text: str, *, required: bool) -> int | None:
    text = text.strip().replace("_", "")
    if not text:
        if required:
            raise FormError(f"{field} is required")
        return None
    try:
        return int(text)
    except ValueError:
        raise FormError(f"{field} must be a whole number, got {text!r}") from None


def build_spec(name: str, model: str, replicas: str, values: dict[str, Any],
               base: dict[str, Any] | None = None) -> DeploySpec:
    """Validate the form's raw values into a DeploySpec; FormError names the field to fix."""
    name, model = name.strip(), model.strip()
    check_deployment_name(name)
    if not model:
        raise FormError("model is required: a registered name, an HF folder, a .gguf file or a hub id")
    count = _whole("replicas", replicas, required=False)
    if count is not None and count < 0:
        raise FormError(f"replicas must be >= 0, got {count}")
    config = {k: v for k, v in (base or {}).items() if k != "model"}
    for field, _label, _hint in NUMBERS:
        config[field] = _whole(field, str(values.get(field, "")), required=field in REQUIRED)
    for field, _label, _options in CHOICES:
        value = values[field]
        config[field] = None if value == UNSET_CHOICE.get(field) else value
    for field, _label in SWITCHES:
        config[field] = bool(values[field])
    try:
        checked = EngineConfig.from_dict({**config, "model": model})
    except InvalidRequest as e:
        raise FormError(f"invalid engine config: {e}") from None
    except TypeError as e:  # a key this engine does not know, carried over from the deployment
        raise FormError(f"invalid engine config: {e}") from None
    return DeploySpec(name, model, {k: v for k, v in checked.to_dict().items() if k != "model"}, count)


class DeployForm(ModalScreen[DeploySpec | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "submit", "Deploy…"),
    ]

    def __init__(self, deployment: pb.Deployment | None = None) -> None:
        super().__init__()
        self.deployment = deployment
        self.base: dict[str, Any] = {}
        if deployment is not None:
            try:
                loaded = json.loads(deployment.engine_config_json or "{}")
            except ValueError:
                loaded = {}
            self.base = loaded if isinstance(loaded, dict) else {}
        defaults = EngineConfig(model=deployment.model if deployment else "-").to_dict()
        self.initial = {**defaults, **{k: v for k, v in self.base.items() if k in defaults}}

    def compose(self) -> ComposeResult:
        d = self.deployment
        initial = self.initial
        title = f"Deploy a new revision of {d.name}" if d is not None else "Deploy a model"
        with Vertical(classes="dialog", id="deploy"):
            yield Static(title, classes="dialog-title", markup=False)
            with Grid(id="deploy-grid"):
                yield Label("name")
                yield Input(d.name if d else "", id="name", placeholder="e.g. chat", compact=True)
                yield Label("model")
                yield Input(d.model if d else "", id="model", placeholder="name, folder, .gguf or hub id",
                            compact=True)
                yield Label("replicas")
                yield Input("", id="replicas", placeholder="keep" if d else "default 1", compact=True)
                for field, label, options in CHOICES:
                    value = initial.get(field)
                    yield Label(label)
                    yield Select([(str(o), o) for o in options],
                                 value=UNSET_CHOICE.get(field, value) if value is None else value,
                                 allow_blank=False, id=field, compact=True)
                for field, label, hint in NUMBERS:
                    value = initial.get(field)
                    yield Label(label)
                    yield Input("" if value is None else str(value), id=field, placeholder=hint, compact=True)
                for field, label in SWITCHES:
                    yield Label(label)
                    yield Checkbox("on", bool(initial.get(field)), id=field, compact=True)
            yield Static("", classes="dialog-error", id="deploy-error")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Deploy… (ctrl+s)", id="submit", variant="primary", compact=True)
                yield Button("Cancel (esc)", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.query_one("#model" if self.deployment is not None else "#name", Input).focus()

    def values(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for field, _label, _hint in NUMBERS:
            found[field] = self.query_one(f"#{field}", Input).value
        for field, _label, _options in CHOICES:
            found[field] = self.query_one(f"#{field}", Select).value
        for field, _label in SWITCHES:
            found[field] = self.query_one(f"#{field}", Checkbox).value
        return found

    def action_submit(self) -> None:
        try:
            spec = build_spec(self.query_one("#name", Input).value, self.query_one("#model", Input).value,
                              self.query_one("#replicas", Input).value, self.values(), self.base)
        except FormError as e:
            self.query_one("#deploy-error", Static).update(f"✖ {e}")
            return
        self.dismiss(spec)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "submit":
            self.action_submit()
        else:
            self.action_cancel()
