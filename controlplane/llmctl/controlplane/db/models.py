"""The control plane's SQL schema: one typed SQLAlchemy 2 model per noun.

Migrations never import this module's classes for data changes; the initial migration spells the same
schema out, and tests/controlplane/test_migrations.py checks the two agree.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Double,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, Mapper, mapped_column, object_session, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NAME_LENGTH = 63
"""Deployment, node and tenant names are DNS labels, so they fit in hostnames and Kubernetes objects."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always tz-aware UTC in Python.

    SQLite has no time zones and stores text, so everything is converted to UTC before it is written
    (text comparisons then order correctly) and tagged UTC again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the control plane stores tz-aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class NodeState(enum.StrEnum):
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    DRAINING = "draining"


class ReplicaState(enum.StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class ReplicaRole(enum.StrEnum):
    SERVE = "serve"
    """Routed by the gateway: a replica of the deployment's current (or a still-serving) revision."""
    SCORE = "score"
    """Never routed: the deployment's quality reference, which scores sampled answers."""
    TRIAL = "trial"
    """Never routed: an optimization run's current best or candidate configuration, measured side by side."""


class QualityState(enum.StrEnum):
    OK = "ok"
    WATCH = "watch"
    DEGRADED = "degraded"


class RunState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    KEPT = "kept"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


class MeasurementState(enum.StrEnum):
    PENDING = "pending"
    """Stored; sent to the node's agent (again after a reconnect or a control-plane restart) until it answers."""
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class SampleStatus(enum.StrEnum):
    PENDING = "pending"
    SCORED = "scored"
    FAILED = "failed"


class AutoscaleMode(enum.StrEnum):
    ON = "on"
    ADVISORY = "advisory"
    OFF = "off"


def _string_enum(enum_class: type[enum.StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK, so adding a state later is a one-line migration everywhere.
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[dict[str, Any]]: JSON()}


class Node(Base):
    """A GPU host running an agent."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    gpus: Mapped[list[dict[str, Any]]]
    """One dict per GPU: index, name, uuid, memory_total_bytes."""
    engine_version: Mapped[str] = mapped_column(String(64))
    capabilities: Mapped[dict[str, Any]]
    max_replicas: Mapped[int] = mapped_column(default=4)
    state: Mapped[NodeState] = mapped_column(_string_enum(NodeState, "node_state"))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)

    replicas: Mapped[list[Replica]] = relationship(back_populates="node", passive_deletes=True)


class Deployment(Base):
    """A named model service: what should run (the current revision) and how many copies."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    model: Mapped[str] = mapped_column(String(512))
    """The current revision's model, kept here so listings need no join."""
    desired_replicas: Mapped[int] = mapped_column(default=1)
    # use_alter: deployments and revisions point at each other; the FK is added after both tables exist.
    current_revision_id: Mapped[int | None] = mapped_column(
        ForeignKey("revisions.id", use_alter=True), default=None
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    quality_sample_rate: Mapped[float] = mapped_column(Double, default=0.01)
    """Fraction of the gateway's answers that are stored and scored against the reference; 0 turns it off."""
    quality_auto_rollback: Mapped[bool] = mapped_column(Boolean, default=False)
    """Roll back to the newest earlier revision judged `ok` when the current one turns `degraded`."""
    quality_threshold: Mapped[float] = mapped_column(Double, default=0.1)
    """The tolerated drop of the reference's mean log-likelihood per answer token (nats) before alarm."""
    quality_reference_revision_id: Mapped[int | None] = mapped_column(
        ForeignKey("revisions.id", use_alter=True), default=None
    )
    """The revision answers are judged against; None: the first revision without weight quantization."""
    semantic_cache_threshold: Mapped[float | None] = mapped_column(Double, default=None)
    """The gateway answers a reworded question from cache at this cosine similarity or more; None: off."""

    # Every UPDATE/DELETE checks and bumps `version`: a writer holding a stale copy gets StaleDataError.
    __mapper_args__ = {"version_id_col": version}

    # post_update: the pointer is written in a second UPDATE after the revision row exists.
    current_revision: Mapped[Revision | None] = relationship(
        foreign_keys=[current_revision_id], post_update=True
    )
    quality_reference_revision: Mapped[Revision | None] = relationship(
        foreign_keys=[quality_reference_revision_id], post_update=True
    )
    revisions: Mapped[list[Revision]] = relationship(
        back_populates="deployment",
        foreign_keys="Revision.deployment_id",
        cascade="all, delete-orphan",
        order_by="Revision.number",
    )
    replicas: Mapped[list[Replica]] = relationship(back_populates="deployment", cascade="all, delete-orphan")
    autoscaling: Mapped[Autoscaling | None] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", passive_deletes=True
    )


class Revision(Base):
    """An immutable snapshot of what a deployment serves: model plus the full EngineConfig."""

    __tablename__ = "revisions"
    __table_args__ = (UniqueConstraint("deployment_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    number: Mapped[int]
    """1, 2, 3 ... per deployment, without gaps."""
    model: Mapped[str] = mapped_column(String(512))
    engine_config: Mapped[dict[str, Any]]
    """EngineConfig.to_dict(): every field, so a rollback restores defaults as they were, too."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)

    deployment: Mapped[Deployment] = relationship(back_populates="revisions", foreign_keys=[deployment_id])


class RevisionImmutable(RuntimeError):
    """Raised by the ORM when code tries to change a stored revision (a bug, never user input)."""


@event.listens_for(Revision, "before_update")
def _refuse_revision_update(mapper: Mapper[Revision], connection: Any, target: Revision) -> None:
    # before_update also fires for rows only touched through a relationship collection; refuse real
    # column changes only.
    session = object_session(target)
    if session is not None and session.is_modified(target, include_collections=False):
        raise RevisionImmutable(
            f"revision {target.number} of deployment {target.deployment_id} is immutable; deploy a new one"
        )


class Replica(Base):
    """One engine process serving one revision of a deployment, on a node once scheduled."""

    __tablename__ = "replicas"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id", ondelete="CASCADE"))
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    state: Mapped[ReplicaState] = mapped_column(_string_enum(ReplicaState, "replica_state"))
    role: Mapped[ReplicaRole] = mapped_column(_string_enum(ReplicaRole, "replica_role"), default=ReplicaRole.SERVE)
    url: Mapped[str | None] = mapped_column(String(512))
    error: Mapped[str | None] = mapped_column(Text)
    restarts: Mapped[int] = mapped_column(default=0)
    engine_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """A TRIAL replica's engine config (its revision gives the model); None: the revision's config."""
    optimization_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("optimization_runs.id", ondelete="CASCADE"), default=None, index=True
    )
    """The optimization run a TRIAL replica belongs to."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="replicas")
    revision: Mapped[Revision] = relationship()
    node: Mapped[Node | None] = relationship(back_populates="replicas")


class Event(Base):
    """The audit log. `id` only grows, so watchers resume with `after_id`."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    deployment_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), index=True)
    node_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    actor: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]]


class Tenant(Base):
    """A customer of the gateway. Limits of 0 mean unlimited."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    rpm: Mapped[int] = mapped_column(default=0)
    tpm: Mapped[int] = mapped_column(default=0)
    monthly_tokens: Mapped[int] = mapped_column(default=0)
    quality_opt_out: Mapped[bool] = mapped_column(Boolean, default=False)
    """Never store this tenant's requests or answers as quality samples."""
    cache_sampled: Mapped[bool] = mapped_column(Boolean, default=False)
    """The gateway's exact response cache may answer this tenant's sampled requests, not only deterministic ones."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    api_keys: Mapped[list[ApiKey]] = relationship(back_populates="tenant", cascade="all, delete-orphan")


class ApiKey(Base):
    """A tenant's key, stored only as a hash (see `scheme`); the prefix finds the row and names the key."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(12), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    scheme: Mapped[str] = mapped_column(String(16), default="hmac-sha256")
    """"hmac-sha256": HMAC with the control plane's secret; "sha256": a key stored before that, rehashed with
    HMAC the first time it authenticates."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]

    tenant: Mapped[Tenant] = relationship(back_populates="api_keys")


class AuditRecord(Base):
    """One AdminService call that changes something (rpc/audit.py): who, what, when, how it ended. Callers
    are named by a token fingerprint, never the token; failed and refused calls are recorded too."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    peer: Mapped[str] = mapped_column(String(128))
    rpc: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(255))
    result: Mapped[str] = mapped_column(String(32))
    """"ok", or the gRPC status code's name (e.g. "NOT_FOUND")."""
    message: Mapped[str] = mapped_column(Text, default="")


class UsageRecord(Base):
    """Tokens and cost of one gateway request; deployment_name survives the deployment's deletion."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_id_at", "tenant_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    deployment_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    cost_usd: Mapped[float] = mapped_column(Double)


class TrafficSample(Base):
    """The shape of one answered gateway request, without its content or tenant: when it arrived, its token
    counts, and about how many of its prompt tokens repeat the start of an earlier prompt (gateway/traffic.py).
    deployment_name survives the deployment's deletion, like usage rows."""

    __tablename__ = "traffic_samples"
    __table_args__ = (Index("ix_traffic_samples_deployment_name_arrived_at", "deployment_name", "arrived_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    arrived_at: Mapped[datetime]
    """When the gateway received the request."""
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    shared_prefix_tokens: Mapped[int]
    shared_prefix_hash: Mapped[str | None] = mapped_column(String(16), default=None)
    """The shared prefix's key (gateway/traffic.py), HMAC'd with the control plane's secret: requests sharing
    the same prefix have the same hash; None when nothing was shared."""
    system_prompt_tokens: Mapped[int] = mapped_column(default=0)
    """About how many prompt tokens the system messages took (their share of the rendered prompt)."""
    system_prompt_hash: Mapped[str | None] = mapped_column(String(16), default=None)
    """The system messages' digest, HMAC'd with the control plane's secret; None without any."""


class Autoscaling(Base):
    """A deployment's autoscaling policy (autoscaling/policy.py AutoscalePolicy, field for field). While its
    mode is on, the autoscaler is the only writer of the deployment's desired_replicas."""

    __tablename__ = "autoscaling"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), unique=True)
    min_replicas: Mapped[int]
    max_replicas: Mapped[int]
    target_queue: Mapped[float] = mapped_column(Double)
    target_kv_usage: Mapped[float | None] = mapped_column(Double)
    scale_up_window_s: Mapped[float] = mapped_column(Double)
    scale_down_window_s: Mapped[float] = mapped_column(Double)
    max_step: Mapped[int]
    mode: Mapped[AutoscaleMode] = mapped_column(_string_enum(AutoscaleMode, "autoscale_mode"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))

    deployment: Mapped[Deployment] = relationship(back_populates="autoscaling")


class DeploymentRoute(Base):
    """A deployment's model route: which of its requests the gateway sends to a cheaper companion deployment
    (gateway/model_route.py). Deleting either deployment deletes the route."""

    __tablename__ = "deployment_routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), unique=True)
    companion_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    rule_kind: Mapped[str] = mapped_column(String(32))
    """max-prompt-tokens, regex or classifier."""
    rule_value: Mapped[str] = mapped_column(Text, default="")
    """The rule's parameter as written (the token limit, the pattern); empty for the classifier."""
    max_in_flight: Mapped[int | None] = mapped_column(default=None)
    """Requests per companion replica beyond which it counts as saturated; None: its engine's max_num_seqs."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))

    deployment: Mapped[Deployment] = relationship(foreign_keys=[deployment_id])
    companion: Mapped[Deployment] = relationship(foreign_keys=[companion_id])


class AutoscaleDecision(Base):
    """One autoscaling decision that changed (or, in advisory mode, would have changed) a replica count, or
    that was refused: what the signals said and why. deployment_name survives the deployment, like events."""

    __tablename__ = "autoscale_decisions"
    __table_args__ = (Index("ix_autoscale_decisions_deployment_name_at", "deployment_name", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    mode: Mapped[AutoscaleMode] = mapped_column(_string_enum(AutoscaleMode, "autoscale_mode"))
    current: Mapped[int]
    desired: Mapped[int]
    applied: Mapped[bool] = mapped_column(Boolean)
    signal: Mapped[str] = mapped_column(String(16))
    load: Mapped[float | None] = mapped_column(Double)
    target: Mapped[float | None] = mapped_column(Double)
    reason: Mapped[str] = mapped_column(Text)


class QualitySample(Base):
    """One sampled answer and its scores under the deployment's reference.

    mean_logprob / top1: the reference's mean log-likelihood per token of the served answer given the same
    prompt, and the fraction of its tokens that are the reference's top-1 choice. baseline_*: the same two
    scores for the answer the reference itself gives to the same prompt with the same sampling parameters.
    """

    __tablename__ = "quality_samples"
    __table_args__ = (Index("ix_quality_samples_deployment_id_revision", "deployment_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int]
    """The number of the revision whose replica answered."""
    tenant_id: Mapped[int | None] = mapped_column(ForeignKey("tenants.id", ondelete="SET NULL"))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """"chat" or "completion"."""
    request: Mapped[dict[str, Any]]
    """messages or prompt, and the sampling parameters, as the client sent them."""
    answer: Mapped[str] = mapped_column(Text)
    answer_token_ids: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    """The answer as the reference's tokenizer encodes it (what was scored)."""
    status: Mapped[SampleStatus] = mapped_column(_string_enum(SampleStatus, "sample_status"))
    error: Mapped[str | None] = mapped_column(Text, default=None)
    mean_logprob: Mapped[float | None] = mapped_column(Double, default=None)
    top1: Mapped[float | None] = mapped_column(Double, default=None)
    baseline_mean_logprob: Mapped[float | None] = mapped_column(Double, default=None)
    baseline_top1: Mapped[float | None] = mapped_column(Double, default=None)
    scored_at: Mapped[datetime | None] = mapped_column(default=None)


class RevisionQuality(Base):
    """The quality judgement of one revision of a deployment, and the samples it lost."""

    __tablename__ = "revision_quality"
    __table_args__ = (UniqueConstraint("deployment_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"))
    revision: Mapped[int]
    state: Mapped[QualityState] = mapped_column(_string_enum(QualityState, "quality_state"))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    dropped: Mapped[int] = mapped_column(default=0)
    """Sampled answers that were never scored: the queue was full, or the scorer failed or was missing."""
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """The last judgement's numbers (window sizes, statistics, p-values)."""


class OptimizationRun(Base):
    """One `llmctl optimize`: options, where it stands, and the outcome; its steps hold the trail."""

    __tablename__ = "optimization_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    deployment_id: Mapped[int] = mapped_column(ForeignKey("deployments.id", ondelete="CASCADE"), index=True)
    running_deployment_id: Mapped[int | None] = mapped_column(unique=True, default=None)
    """The deployment's id while the run is RUNNING, else NULL: the database itself refuses a second running
    run of a deployment (NULLs never collide in a unique index)."""
    state: Mapped[RunState] = mapped_column(_string_enum(RunState, "run_state"))
    goal: Mapped[str] = mapped_column(String(16))
    options: Mapped[dict[str, Any]]
    """OptimizeOptions.to_dict()."""
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    node_name: Mapped[str | None] = mapped_column(String(NAME_LENGTH), default=None)
    """Where its trial replicas run and are measured (chosen once, kept across restarts)."""
    gpu: Mapped[str | None] = mapped_column(String(128), default=None)
    price_per_hour: Mapped[float | None] = mapped_column(Double, default=None)
    baseline_revision: Mapped[int]
    result_revision: Mapped[int | None] = mapped_column(default=None)
    bottleneck: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    summary: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text, default=None)

    deployment: Mapped[Deployment] = relationship()
    steps: Mapped[list[OptimizationStep]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="OptimizationStep.number"
    )


class OptimizationStep(Base):
    """Step 0 measures the baseline; each later step tries one technique on top of the best kept so far."""

    __tablename__ = "optimization_steps"
    __table_args__ = (UniqueConstraint("run_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("optimization_runs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int]
    technique: Mapped[str] = mapped_column(String(64))
    state: Mapped[StepState] = mapped_column(_string_enum(StepState, "step_state"))
    change: Mapped[dict[str, Any]] = mapped_column(default=dict)
    engine_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """The configuration measured: the best so far plus `change`."""
    reason: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """The candidate's (step 0: the baseline's) means over its repeats."""
    baseline_metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    """The current best's means over its measurements in this step."""
    gain: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    run: Mapped[OptimizationRun] = relationship(back_populates="steps")
    measurements: Mapped[list[Measurement]] = relationship(
        back_populates="step", cascade="all, delete-orphan", order_by="Measurement.id"
    )


class Measurement(Base):
    """One bench or eval an agent ran (or is running) for a step, with its whole result."""

    __tablename__ = "measurements"

    id: Mapped[int] = mapped_column(primary_key=True)
    step_id: Mapped[int] = mapped_column(ForeignKey("optimization_steps.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """"bench" or "eval"."""
    arm: Mapped[str] = mapped_column(String(1), default="")
    """"A" (the best so far) or "B" (the candidate) for a bench; "" for an eval."""
    repeat: Mapped[int] = mapped_column(default=0)
    state: Mapped[MeasurementState] = mapped_column(_string_enum(MeasurementState, "measurement_state"))
    node_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    replica_id: Mapped[int | None] = mapped_column(default=None)
    args: Mapped[dict[str, Any]]
    timeout_s: Mapped[float] = mapped_column(Double)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    wall_s: Mapped[float | None] = mapped_column(Double, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    step: Mapped[OptimizationStep] = relationship(back_populates="measurements")
