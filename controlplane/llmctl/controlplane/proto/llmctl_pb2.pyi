from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_PENDING: _ClassVar[ReplicaState]
    REPLICA_STATE_STARTING: _ClassVar[ReplicaState]
    REPLICA_STATE_READY: _ClassVar[ReplicaState]
    REPLICA_STATE_DRAINING: _ClassVar[ReplicaState]
    REPLICA_STATE_STOPPED: _ClassVar[ReplicaState]
    REPLICA_STATE_FAILED: _ClassVar[ReplicaState]

class TelemetrySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TELEMETRY_SOURCE_UNSPECIFIED: _ClassVar[TelemetrySource]
    TELEMETRY_SOURCE_NVML: _ClassVar[TelemetrySource]
    TELEMETRY_SOURCE_HOST: _ClassVar[TelemetrySource]
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_PENDING: ReplicaState
REPLICA_STATE_STARTING: ReplicaState
REPLICA_STATE_READY: ReplicaState
REPLICA_STATE_DRAINING: ReplicaState
REPLICA_STATE_STOPPED: ReplicaState
REPLICA_STATE_FAILED: ReplicaState
TELEMETRY_SOURCE_UNSPECIFIED: TelemetrySource
TELEMETRY_SOURCE_NVML: TelemetrySource
TELEMETRY_SOURCE_HOST: TelemetrySource

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_total_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_name", "hostname", "gpus", "engine_version", "capabilities", "max_replicas")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    hostname: str
    gpus: _containers.RepeatedCompositeFieldContainer[GpuInfo]
    engine_version: str
    capabilities: _containers.ScalarMap[str, str]
    max_replicas: int
    def __init__(self, node_name: _Optional[str] = ..., hostname: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GpuInfo, _Mapping]]] = ..., engine_version: _Optional[str] = ..., capabilities: _Optional[_Mapping[str, str]] = ..., max_replicas: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_name", "heartbeat_interval_s")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    heartbeat_interval_s: float
    def __init__(self, node_name: _Optional[str] = ..., heartbeat_interval_s: _Optional[float] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "heartbeat", "telemetry", "replica_status", "measurement_result")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_STATUS_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_RESULT_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    heartbeat: Heartbeat
    telemetry: TelemetrySample
    replica_status: ReplicaStatus
    measurement_result: MeasurementResult
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., telemetry: _Optional[_Union[TelemetrySample, _Mapping]] = ..., replica_status: _Optional[_Union[ReplicaStatus, _Mapping]] = ..., measurement_result: _Optional[_Union[MeasurementResult, _Mapping]] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_name", "replicas")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStatus]
    def __init__(self, node_name: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStatus, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    def __init__(self, sent_at: _Optional[float] = ...) -> None: ...

class ControlMessage(_message.Message):
    __slots__ = ("start_replica", "stop_replica", "drain", "ping", "run_measurement", "cancel_measurement")
    START_REPLICA_FIELD_NUMBER: _ClassVar[int]
    STOP_REPLICA_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    PING_FIELD_NUMBER: _ClassVar[int]
    RUN_MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_MEASUREMENT_FIELD_NUMBER: _ClassVar[int]
    start_replica: StartReplica
    stop_replica: StopReplica
    drain: DrainNode
    ping: Ping
    run_measurement: RunMeasurement
    cancel_measurement: CancelMeasurement
    def __init__(self, start_replica: _Optional[_Union[StartReplica, _Mapping]] = ..., stop_replica: _Optional[_Union[StopReplica, _Mapping]] = ..., drain: _Optional[_Union[DrainNode, _Mapping]] = ..., ping: _Optional[_Union[Ping, _Mapping]] = ..., run_measurement: _Optional[_Union[RunMeasurement, _Mapping]] = ..., cancel_measurement: _Optional[_Union[CancelMeasurement, _Mapping]] = ...) -> None: ...

class RunMeasurement(_message.Message):
    __slots__ = ("measurement_id", "kind", "args_json", "timeout_s")
    MEASUREMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    measurement_id: int
    kind: str
    args_json: str
    timeout_s: float
    def __init__(self, measurement_id: _Optional[int] = ..., kind: _Optional[str] = ..., args_json: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class CancelMeasurement(_message.Message):
    __slots__ = ("measurement_id",)
    MEASUREMENT_ID_FIELD_NUMBER: _ClassVar[int]
    measurement_id: int
    def __init__(self, measurement_id: _Optional[int] = ...) -> None: ...

class MeasurementResult(_message.Message):
    __slots__ = ("measurement_id", "ok", "result_json", "error", "wall_s")
    MEASUREMENT_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    RESULT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    measurement_id: int
    ok: bool
    result_json: str
    error: str
    wall_s: float
    def __init__(self, measurement_id: _Optional[int] = ..., ok: _Optional[bool] = ..., result_json: _Optional[str] = ..., error: _Optional[str] = ..., wall_s: _Optional[float] = ...) -> None: ...

class Ping(_message.Message):
    __slots__ = ("sent_at",)
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    def __init__(self, sent_at: _Optional[float] = ...) -> None: ...

class StartReplica(_message.Message):
    __slots__ = ("replica_id", "deployment", "revision", "model", "engine_config_json", "served_model_name")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    deployment: str
    revision: int
    model: str
    engine_config_json: str
    served_model_name: str
    def __init__(self, replica_id: _Optional[int] = ..., deployment: _Optional[str] = ..., revision: _Optional[int] = ..., model: _Optional[str] = ..., engine_config_json: _Optional[str] = ..., served_model_name: _Optional[str] = ...) -> None: ...

class StopReplica(_message.Message):
    __slots__ = ("replica_id", "drain", "grace_s")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    drain: bool
    grace_s: float
    def __init__(self, replica_id: _Optional[int] = ..., drain: _Optional[bool] = ..., grace_s: _Optional[float] = ...) -> None: ...

class DrainNode(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ReplicaStatus(_message.Message):
    __slots__ = ("replica_id", "deployment", "revision", "state", "url", "error", "restarts")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    deployment: str
    revision: int
    state: ReplicaState
    url: str
    error: str
    restarts: int
    def __init__(self, replica_id: _Optional[int] = ..., deployment: _Optional[str] = ..., revision: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., url: _Optional[str] = ..., error: _Optional[str] = ..., restarts: _Optional[int] = ...) -> None: ...

class TelemetrySample(_message.Message):
    __slots__ = ("sent_at", "source", "gpus", "host", "replicas")
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    sent_at: float
    source: TelemetrySource
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    host: HostSample
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaStats]
    def __init__(self, sent_at: _Optional[float] = ..., source: _Optional[_Union[TelemetrySource, str]] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., host: _Optional[_Union[HostSample, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaStats, _Mapping]]] = ...) -> None: ...

class GpuSample(_message.Message):
    __slots__ = ("index", "uuid", "name", "utilization_percent", "memory_used_bytes", "memory_total_bytes", "power_watts", "power_limit_watts", "temperature_c", "sm_clock_mhz", "processes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    POWER_WATTS_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_WATTS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    SM_CLOCK_MHZ_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    utilization_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    power_watts: float
    power_limit_watts: float
    temperature_c: float
    sm_clock_mhz: float
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., utilization_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., power_watts: _Optional[float] = ..., power_limit_watts: _Optional[float] = ..., temperature_c: _Optional[float] = ..., sm_clock_mhz: _Optional[float] = ..., processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ...) -> None: ...

class GpuProcess(_message.Message):
    __slots__ = ("pid", "used_memory_bytes")
    PID_FIELD_NUMBER: _ClassVar[int]
    USED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    pid: int
    used_memory_bytes: int
    def __init__(self, pid: _Optional[int] = ..., used_memory_bytes: _Optional[int] = ...) -> None: ...

class HostSample(_message.Message):
    __slots__ = ("cpu_percent", "memory_used_bytes", "memory_total_bytes")
    CPU_PERCENT_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_percent: float
    memory_used_bytes: int
    memory_total_bytes: int
    def __init__(self, cpu_percent: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ...) -> None: ...

class ReplicaStats(_message.Message):
    __slots__ = ("replica_id", "running", "waiting", "kv_cache_usage", "ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tokens_per_s", "requests_total", "prompt_tokens_total", "generation_tokens_total")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    GENERATION_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    running: int
    waiting: int
    kv_cache_usage: float
    ttft_p50_s: float
    ttft_p95_s: float
    tpot_p50_s: float
    tokens_per_s: float
    requests_total: int
    prompt_tokens_total: int
    generation_tokens_total: int
    def __init__(self, replica_id: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., kv_cache_usage: _Optional[float] = ..., ttft_p50_s: _Optional[float] = ..., ttft_p95_s: _Optional[float] = ..., tpot_p50_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., requests_total: _Optional[int] = ..., prompt_tokens_total: _Optional[int] = ..., generation_tokens_total: _Optional[int] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("id", "node", "state", "url", "revision", "error", "restarts", "role")
    ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    id: int
    node: str
    state: ReplicaState
    url: str
    revision: int
    error: str
    restarts: int
    role: str
    def __init__(self, id: _Optional[int] = ..., node: _Optional[str] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., url: _Optional[str] = ..., revision: _Optional[int] = ..., error: _Optional[str] = ..., restarts: _Optional[int] = ..., role: _Optional[str] = ...) -> None: ...

class DeploymentStats(_message.Message):
    __slots__ = ("requests_per_s", "ttft_p95_s", "tokens_per_s", "kv_cache_usage", "queue_depth", "ttft_p50_s", "tpot_p50_s")
    REQUESTS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P95_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_USAGE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TPOT_P50_S_FIELD_NUMBER: _ClassVar[int]
    requests_per_s: float
    ttft_p95_s: float
    tokens_per_s: float
    kv_cache_usage: float
    queue_depth: float
    ttft_p50_s: float
    tpot_p50_s: float
    def __init__(self, requests_per_s: _Optional[float] = ..., ttft_p95_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., kv_cache_usage: _Optional[float] = ..., queue_depth: _Optional[float] = ..., ttft_p50_s: _Optional[float] = ..., tpot_p50_s: _Optional[float] = ...) -> None: ...

class Deployment(_message.Message):
    __slots__ = ("name", "model", "revision", "desired_replicas", "ready_replicas", "engine_config_json", "weight_quantization", "kv_cache_dtype", "replicas", "stats", "created_at", "updated_at", "quality", "quality_state", "autoscaling", "semantic_cache_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    READY_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    KV_CACHE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    QUALITY_STATE_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    SEMANTIC_CACHE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    revision: int
    desired_replicas: int
    ready_replicas: int
    engine_config_json: str
    weight_quantization: str
    kv_cache_dtype: str
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    stats: DeploymentStats
    created_at: float
    updated_at: float
    quality: QualityPolicy
    quality_state: str
    autoscaling: AutoscalePolicy
    semantic_cache_threshold: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., revision: _Optional[int] = ..., desired_replicas: _Optional[int] = ..., ready_replicas: _Optional[int] = ..., engine_config_json: _Optional[str] = ..., weight_quantization: _Optional[str] = ..., kv_cache_dtype: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., stats: _Optional[_Union[DeploymentStats, _Mapping]] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., quality: _Optional[_Union[QualityPolicy, _Mapping]] = ..., quality_state: _Optional[str] = ..., autoscaling: _Optional[_Union[AutoscalePolicy, _Mapping]] = ..., semantic_cache_threshold: _Optional[float] = ...) -> None: ...

class AutoscalePolicy(_message.Message):
    __slots__ = ("min_replicas", "max_replicas", "target_queue", "target_kv_usage", "scale_up_window_s", "scale_down_window_s", "max_step", "mode")
    MIN_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TARGET_QUEUE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    SCALE_UP_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    min_replicas: int
    max_replicas: int
    target_queue: float
    target_kv_usage: float
    scale_up_window_s: float
    scale_down_window_s: float
    max_step: int
    mode: str
    def __init__(self, min_replicas: _Optional[int] = ..., max_replicas: _Optional[int] = ..., target_queue: _Optional[float] = ..., target_kv_usage: _Optional[float] = ..., scale_up_window_s: _Optional[float] = ..., scale_down_window_s: _Optional[float] = ..., max_step: _Optional[int] = ..., mode: _Optional[str] = ...) -> None: ...

class SetAutoscalingRequest(_message.Message):
    __slots__ = ("deployment", "policy")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: AutoscalePolicy
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[AutoscalePolicy, _Mapping]] = ...) -> None: ...

class GetAutoscalingRequest(_message.Message):
    __slots__ = ("deployment", "limit")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    limit: int
    def __init__(self, deployment: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class AutoscaleDecision(_message.Message):
    __slots__ = ("id", "at", "mode", "current", "desired", "applied", "signal", "load", "target", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: float
    mode: str
    current: int
    desired: int
    applied: bool
    signal: str
    load: float
    target: float
    reason: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[float] = ..., mode: _Optional[str] = ..., current: _Optional[int] = ..., desired: _Optional[int] = ..., applied: _Optional[bool] = ..., signal: _Optional[str] = ..., load: _Optional[float] = ..., target: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class AutoscaleEvaluation(_message.Message):
    __slots__ = ("current", "desired", "signal", "load", "target", "reason")
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    current: int
    desired: int
    signal: str
    load: float
    target: float
    reason: str
    def __init__(self, current: _Optional[int] = ..., desired: _Optional[int] = ..., signal: _Optional[str] = ..., load: _Optional[float] = ..., target: _Optional[float] = ..., reason: _Optional[str] = ...) -> None: ...

class Autoscaling(_message.Message):
    __slots__ = ("deployment", "policy", "last", "decisions")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: AutoscalePolicy
    last: AutoscaleEvaluation
    decisions: _containers.RepeatedCompositeFieldContainer[AutoscaleDecision]
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[AutoscalePolicy, _Mapping]] = ..., last: _Optional[_Union[AutoscaleEvaluation, _Mapping]] = ..., decisions: _Optional[_Iterable[_Union[AutoscaleDecision, _Mapping]]] = ...) -> None: ...

class QualityPolicy(_message.Message):
    __slots__ = ("sample_rate", "auto_rollback", "threshold", "reference_revision")
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_REVISION_FIELD_NUMBER: _ClassVar[int]
    sample_rate: float
    auto_rollback: bool
    threshold: float
    reference_revision: int
    def __init__(self, sample_rate: _Optional[float] = ..., auto_rollback: _Optional[bool] = ..., threshold: _Optional[float] = ..., reference_revision: _Optional[int] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("number", "model", "engine_config_json", "created_at", "created_by", "reason", "current")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    number: int
    model: str
    engine_config_json: str
    created_at: float
    created_by: str
    reason: str
    current: bool
    def __init__(self, number: _Optional[int] = ..., model: _Optional[str] = ..., engine_config_json: _Optional[str] = ..., created_at: _Optional[float] = ..., created_by: _Optional[str] = ..., reason: _Optional[str] = ..., current: _Optional[bool] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "hostname", "state", "last_heartbeat_at", "engine_version", "max_replicas", "replica_count", "gpus", "host", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_COUNT_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    hostname: str
    state: str
    last_heartbeat_at: float
    engine_version: str
    max_replicas: int
    replica_count: int
    gpus: _containers.RepeatedCompositeFieldContainer[GpuSample]
    host: HostSample
    source: TelemetrySource
    def __init__(self, name: _Optional[str] = ..., hostname: _Optional[str] = ..., state: _Optional[str] = ..., last_heartbeat_at: _Optional[float] = ..., engine_version: _Optional[str] = ..., max_replicas: _Optional[int] = ..., replica_count: _Optional[int] = ..., gpus: _Optional[_Iterable[_Union[GpuSample, _Mapping]]] = ..., host: _Optional[_Union[HostSample, _Mapping]] = ..., source: _Optional[_Union[TelemetrySource, str]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("id", "at", "kind", "deployment", "node", "actor", "message", "details_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: float
    kind: str
    deployment: str
    node: str
    actor: str
    message: str
    details_json: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[float] = ..., kind: _Optional[str] = ..., deployment: _Optional[str] = ..., node: _Optional[str] = ..., actor: _Optional[str] = ..., message: _Optional[str] = ..., details_json: _Optional[str] = ...) -> None: ...

class Tenant(_message.Message):
    __slots__ = ("name", "rpm", "tpm", "monthly_tokens", "created_at", "quality_opt_out", "cache_sampled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    QUALITY_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    rpm: int
    tpm: int
    monthly_tokens: int
    created_at: float
    quality_opt_out: bool
    cache_sampled: bool
    def __init__(self, name: _Optional[str] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., monthly_tokens: _Optional[int] = ..., created_at: _Optional[float] = ..., quality_opt_out: _Optional[bool] = ..., cache_sampled: _Optional[bool] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("deployment", "requests", "prompt_tokens", "completion_tokens", "cost_usd")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    def __init__(self, deployment: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class ListDeploymentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeploymentsResponse(_message.Message):
    __slots__ = ("deployments",)
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    deployments: _containers.RepeatedCompositeFieldContainer[Deployment]
    def __init__(self, deployments: _Optional[_Iterable[_Union[Deployment, _Mapping]]] = ...) -> None: ...

class GetDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeployRequest(_message.Message):
    __slots__ = ("name", "model", "engine_config_json", "replicas", "quality_sample_rate", "quality_auto_rollback", "quality_threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_AUTO_ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    QUALITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    model: str
    engine_config_json: str
    replicas: int
    quality_sample_rate: float
    quality_auto_rollback: bool
    quality_threshold: float
    def __init__(self, name: _Optional[str] = ..., model: _Optional[str] = ..., engine_config_json: _Optional[str] = ..., replicas: _Optional[int] = ..., quality_sample_rate: _Optional[float] = ..., quality_auto_rollback: _Optional[bool] = ..., quality_threshold: _Optional[float] = ...) -> None: ...

class DeployResponse(_message.Message):
    __slots__ = ("deployment", "revision", "created_revision")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_REVISION_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    revision: int
    created_revision: bool
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., revision: _Optional[int] = ..., created_revision: _Optional[bool] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "to_revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_revision: int
    def __init__(self, name: _Optional[str] = ..., to_revision: _Optional[int] = ...) -> None: ...

class ListRevisionsRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListRevisionsResponse(_message.Message):
    __slots__ = ("revisions",)
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    revisions: _containers.RepeatedCompositeFieldContainer[Revision]
    def __init__(self, revisions: _Optional[_Iterable[_Union[Revision, _Mapping]]] = ...) -> None: ...

class ScaleRequest(_message.Message):
    __slots__ = ("name", "replicas")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    replicas: int
    def __init__(self, name: _Optional[str] = ..., replicas: _Optional[int] = ...) -> None: ...

class DeleteDeploymentRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteDeploymentResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class DrainNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class UndrainNodeRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("after_id", "deployment", "limit", "newest")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    NEWEST_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    deployment: str
    limit: int
    newest: bool
    def __init__(self, after_id: _Optional[int] = ..., deployment: _Optional[str] = ..., limit: _Optional[int] = ..., newest: _Optional[bool] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_id", "deployment")
    AFTER_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    after_id: int
    deployment: str
    def __init__(self, after_id: _Optional[int] = ..., deployment: _Optional[str] = ...) -> None: ...

class CreateTenantRequest(_message.Message):
    __slots__ = ("name", "rpm", "tpm", "monthly_tokens", "quality_opt_out")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RPM_FIELD_NUMBER: _ClassVar[int]
    TPM_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    rpm: int
    tpm: int
    monthly_tokens: int
    quality_opt_out: bool
    def __init__(self, name: _Optional[str] = ..., rpm: _Optional[int] = ..., tpm: _Optional[int] = ..., monthly_tokens: _Optional[int] = ..., quality_opt_out: _Optional[bool] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant", "api_key")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    tenant: Tenant
    api_key: str
    def __init__(self, tenant: _Optional[_Union[Tenant, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ...) -> None: ...

class UpdateTenantRequest(_message.Message):
    __slots__ = ("name", "quality_opt_out", "cache_sampled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    QUALITY_OPT_OUT_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    quality_opt_out: bool
    cache_sampled: bool
    def __init__(self, name: _Optional[str] = ..., quality_opt_out: _Optional[bool] = ..., cache_sampled: _Optional[bool] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant", "since")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    since: float
    def __init__(self, tenant: _Optional[str] = ..., since: _Optional[float] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ...) -> None: ...

class GetQualityRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("mean", "low", "high")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    mean: float
    low: float
    high: float
    def __init__(self, mean: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ...) -> None: ...

class RevisionQuality(_message.Message):
    __slots__ = ("revision", "samples", "pending", "dropped", "state", "mean_logprob", "top1", "baseline_mean_logprob", "baseline_top1", "details_json", "trend", "current")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TOP1_FIELD_NUMBER: _ClassVar[int]
    DETAILS_JSON_FIELD_NUMBER: _ClassVar[int]
    TREND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    revision: int
    samples: int
    pending: int
    dropped: int
    state: str
    mean_logprob: Interval
    top1: Interval
    baseline_mean_logprob: Interval
    baseline_top1: Interval
    details_json: str
    trend: _containers.RepeatedScalarFieldContainer[float]
    current: bool
    def __init__(self, revision: _Optional[int] = ..., samples: _Optional[int] = ..., pending: _Optional[int] = ..., dropped: _Optional[int] = ..., state: _Optional[str] = ..., mean_logprob: _Optional[_Union[Interval, _Mapping]] = ..., top1: _Optional[_Union[Interval, _Mapping]] = ..., baseline_mean_logprob: _Optional[_Union[Interval, _Mapping]] = ..., baseline_top1: _Optional[_Union[Interval, _Mapping]] = ..., details_json: _Optional[str] = ..., trend: _Optional[_Iterable[float]] = ..., current: _Optional[bool] = ...) -> None: ...

class QualityReport(_message.Message):
    __slots__ = ("deployment", "policy", "revisions")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    policy: QualityPolicy
    revisions: _containers.RepeatedCompositeFieldContainer[RevisionQuality]
    def __init__(self, deployment: _Optional[str] = ..., policy: _Optional[_Union[QualityPolicy, _Mapping]] = ..., revisions: _Optional[_Iterable[_Union[RevisionQuality, _Mapping]]] = ...) -> None: ...

class ListQualitySamplesRequest(_message.Message):
    __slots__ = ("name", "revision", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    limit: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class QualitySample(_message.Message):
    __slots__ = ("id", "revision", "tenant", "at", "kind", "request_json", "answer", "status", "error", "mean_logprob", "top1", "baseline_mean_logprob", "baseline_top1")
    ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUEST_JSON_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    TOP1_FIELD_NUMBER: _ClassVar[int]
    BASELINE_MEAN_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    BASELINE_TOP1_FIELD_NUMBER: _ClassVar[int]
    id: int
    revision: int
    tenant: str
    at: float
    kind: str
    request_json: str
    answer: str
    status: str
    error: str
    mean_logprob: float
    top1: float
    baseline_mean_logprob: float
    baseline_top1: float
    def __init__(self, id: _Optional[int] = ..., revision: _Optional[int] = ..., tenant: _Optional[str] = ..., at: _Optional[float] = ..., kind: _Optional[str] = ..., request_json: _Optional[str] = ..., answer: _Optional[str] = ..., status: _Optional[str] = ..., error: _Optional[str] = ..., mean_logprob: _Optional[float] = ..., top1: _Optional[float] = ..., baseline_mean_logprob: _Optional[float] = ..., baseline_top1: _Optional[float] = ...) -> None: ...

class ListQualitySamplesResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[QualitySample]
    def __init__(self, samples: _Optional[_Iterable[_Union[QualitySample, _Mapping]]] = ...) -> None: ...

class SetQualityReferenceRequest(_message.Message):
    __slots__ = ("name", "revision")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    revision: int
    def __init__(self, name: _Optional[str] = ..., revision: _Optional[int] = ...) -> None: ...

class SetSemanticCacheRequest(_message.Message):
    __slots__ = ("name", "threshold")
    NAME_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    name: str
    threshold: float
    def __init__(self, name: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class SetSemanticCacheResponse(_message.Message):
    __slots__ = ("deployment", "warning")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    deployment: Deployment
    warning: str
    def __init__(self, deployment: _Optional[_Union[Deployment, _Mapping]] = ..., warning: _Optional[str] = ...) -> None: ...

class StartOptimizationRequest(_message.Message):
    __slots__ = ("deployment", "goal", "options_json")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    goal: str
    options_json: str
    def __init__(self, deployment: _Optional[str] = ..., goal: _Optional[str] = ..., options_json: _Optional[str] = ...) -> None: ...

class OptimizationRun(_message.Message):
    __slots__ = ("id", "deployment", "state", "goal", "created_at", "finished_at", "summary", "report_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    id: int
    deployment: str
    state: str
    goal: str
    created_at: float
    finished_at: float
    summary: str
    report_json: str
    def __init__(self, id: _Optional[int] = ..., deployment: _Optional[str] = ..., state: _Optional[str] = ..., goal: _Optional[str] = ..., created_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., summary: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class GetOptimizationRequest(_message.Message):
    __slots__ = ("id", "deployment")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    deployment: str
    def __init__(self, id: _Optional[int] = ..., deployment: _Optional[str] = ...) -> None: ...

class ListOptimizationsRequest(_message.Message):
    __slots__ = ("deployment", "limit")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    limit: int
    def __init__(self, deployment: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListOptimizationsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[OptimizationRun]
    def __init__(self, runs: _Optional[_Iterable[_Union[OptimizationRun, _Mapping]]] = ...) -> None: ...

class CancelOptimizationRequest(_message.Message):
    __slots__ = ("id", "deployment")
    ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    deployment: str
    def __init__(self, id: _Optional[int] = ..., deployment: _Optional[str] = ...) -> None: ...

class GetTrafficRequest(_message.Message):
    __slots__ = ("deployment", "window_s")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    window_s: float
    def __init__(self, deployment: _Optional[str] = ..., window_s: _Optional[float] = ...) -> None: ...

class TrafficStats(_message.Message):
    __slots__ = ("mean", "p50", "p95", "max")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    P50_FIELD_NUMBER: _ClassVar[int]
    P95_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    mean: float
    p50: float
    p95: float
    max: float
    def __init__(self, mean: _Optional[float] = ..., p50: _Optional[float] = ..., p95: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class TrafficSummary(_message.Message):
    __slots__ = ("deployment", "since", "until", "requests", "first_at", "last_at", "request_rate", "prompt_tokens", "completion_tokens", "shared_prefix_tokens", "interarrival_s", "shared_fraction", "workload_json", "workload_error", "workload_speedup")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FIRST_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RATE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SHARED_PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INTERARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    SHARED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_ERROR_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    since: float
    until: float
    requests: int
    first_at: float
    last_at: float
    request_rate: float
    prompt_tokens: TrafficStats
    completion_tokens: TrafficStats
    shared_prefix_tokens: TrafficStats
    interarrival_s: TrafficStats
    shared_fraction: float
    workload_json: str
    workload_error: str
    workload_speedup: float
    def __init__(self, deployment: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., requests: _Optional[int] = ..., first_at: _Optional[float] = ..., last_at: _Optional[float] = ..., request_rate: _Optional[float] = ..., prompt_tokens: _Optional[_Union[TrafficStats, _Mapping]] = ..., completion_tokens: _Optional[_Union[TrafficStats, _Mapping]] = ..., shared_prefix_tokens: _Optional[_Union[TrafficStats, _Mapping]] = ..., interarrival_s: _Optional[_Union[TrafficStats, _Mapping]] = ..., shared_fraction: _Optional[float] = ..., workload_json: _Optional[str] = ..., workload_error: _Optional[str] = ..., workload_speedup: _Optional[float] = ...) -> None: ...

class GetPromptAuditRequest(_message.Message):
    __slots__ = ("deployment", "window_s", "top", "target_system_tokens", "usd_per_mtok")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    TARGET_SYSTEM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    window_s: float
    top: int
    target_system_tokens: int
    usd_per_mtok: float
    def __init__(self, deployment: _Optional[str] = ..., window_s: _Optional[float] = ..., top: _Optional[int] = ..., target_system_tokens: _Optional[int] = ..., usd_per_mtok: _Optional[float] = ...) -> None: ...

class TenantPromptTokens(_message.Message):
    __slots__ = ("tenant", "requests", "prompt_tokens", "prompt_share", "completion_tokens", "cost_usd")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_SHARE_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    requests: int
    prompt_tokens: int
    prompt_share: float
    completion_tokens: int
    cost_usd: float
    def __init__(self, tenant: _Optional[str] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., prompt_share: _Optional[float] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ...) -> None: ...

class SystemPromptShare(_message.Message):
    __slots__ = ("hash", "requests", "share", "tokens")
    HASH_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    hash: str
    requests: int
    share: float
    tokens: float
    def __init__(self, hash: _Optional[str] = ..., requests: _Optional[int] = ..., share: _Optional[float] = ..., tokens: _Optional[float] = ...) -> None: ...

class PrefixShare(_message.Message):
    __slots__ = ("hash", "tokens", "requests", "share", "saved_tokens")
    HASH_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    SAVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    hash: str
    tokens: float
    requests: int
    share: float
    saved_tokens: int
    def __init__(self, hash: _Optional[str] = ..., tokens: _Optional[float] = ..., requests: _Optional[int] = ..., share: _Optional[float] = ..., saved_tokens: _Optional[int] = ...) -> None: ...

class PromptSavings(_message.Message):
    __slots__ = ("tokens_per_million", "usd_per_million")
    TOKENS_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    USD_PER_MILLION_FIELD_NUMBER: _ClassVar[int]
    tokens_per_million: float
    usd_per_million: float
    def __init__(self, tokens_per_million: _Optional[float] = ..., usd_per_million: _Optional[float] = ...) -> None: ...

class PromptAudit(_message.Message):
    __slots__ = ("deployment", "since", "until", "requests", "prompt_tokens", "tenants", "system_prompts", "distinct_system_prompts", "system_prompt_requests", "mean_system_tokens", "target_system_tokens", "shorter_system_prompt", "prefixes", "distinct_prefixes", "prefix_saved_tokens", "prefix_saved_fraction", "prefix_cache", "usd_per_mtok", "price_source")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_SYSTEM_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SYSTEM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TARGET_SYSTEM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SHORTER_SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    PREFIXES_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_PREFIXES_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SAVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SAVED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PREFIX_CACHE_FIELD_NUMBER: _ClassVar[int]
    USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    PRICE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    since: float
    until: float
    requests: int
    prompt_tokens: int
    tenants: _containers.RepeatedCompositeFieldContainer[TenantPromptTokens]
    system_prompts: _containers.RepeatedCompositeFieldContainer[SystemPromptShare]
    distinct_system_prompts: int
    system_prompt_requests: int
    mean_system_tokens: float
    target_system_tokens: int
    shorter_system_prompt: PromptSavings
    prefixes: _containers.RepeatedCompositeFieldContainer[PrefixShare]
    distinct_prefixes: int
    prefix_saved_tokens: int
    prefix_saved_fraction: float
    prefix_cache: PromptSavings
    usd_per_mtok: float
    price_source: str
    def __init__(self, deployment: _Optional[str] = ..., since: _Optional[float] = ..., until: _Optional[float] = ..., requests: _Optional[int] = ..., prompt_tokens: _Optional[int] = ..., tenants: _Optional[_Iterable[_Union[TenantPromptTokens, _Mapping]]] = ..., system_prompts: _Optional[_Iterable[_Union[SystemPromptShare, _Mapping]]] = ..., distinct_system_prompts: _Optional[int] = ..., system_prompt_requests: _Optional[int] = ..., mean_system_tokens: _Optional[float] = ..., target_system_tokens: _Optional[int] = ..., shorter_system_prompt: _Optional[_Union[PromptSavings, _Mapping]] = ..., prefixes: _Optional[_Iterable[_Union[PrefixShare, _Mapping]]] = ..., distinct_prefixes: _Optional[int] = ..., prefix_saved_tokens: _Optional[int] = ..., prefix_saved_fraction: _Optional[float] = ..., prefix_cache: _Optional[_Union[PromptSavings, _Mapping]] = ..., usd_per_mtok: _Optional[float] = ..., price_source: _Optional[str] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("kind", "grace_s", "finish")
    KIND_FIELD_NUMBER: _ClassVar[int]
    GRACE_S_FIELD_NUMBER: _ClassVar[int]
    FINISH_FIELD_NUMBER: _ClassVar[int]
    kind: str
    grace_s: float
    finish: bool
    def __init__(self, kind: _Optional[str] = ..., grace_s: _Optional[float] = ..., finish: _Optional[bool] = ...) -> None: ...

class RotateTokenResponse(_message.Message):
    __slots__ = ("token", "previous_valid_until", "token_file")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VALID_UNTIL_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FILE_FIELD_NUMBER: _ClassVar[int]
    token: str
    previous_valid_until: float
    token_file: str
    def __init__(self, token: _Optional[str] = ..., previous_valid_until: _Optional[float] = ..., token_file: _Optional[str] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "at", "actor", "peer", "rpc", "target", "result", "message")
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: float
    actor: str
    peer: str
    rpc: str
    target: str
    result: str
    message: str
    def __init__(self, id: _Optional[int] = ..., at: _Optional[float] = ..., actor: _Optional[str] = ..., peer: _Optional[str] = ..., rpc: _Optional[str] = ..., target: _Optional[str] = ..., result: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("since", "limit")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    since: float
    limit: int
    def __init__(self, since: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ...) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("deployment", "companion", "rule", "max_in_flight", "updated_at")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    COMPANION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    companion: str
    rule: str
    max_in_flight: int
    updated_at: float
    def __init__(self, deployment: _Optional[str] = ..., companion: _Optional[str] = ..., rule: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., updated_at: _Optional[float] = ...) -> None: ...

class SetModelRouteRequest(_message.Message):
    __slots__ = ("deployment", "companion", "rule", "max_in_flight", "off")
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    COMPANION_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    MAX_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    OFF_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    companion: str
    rule: str
    max_in_flight: int
    off: bool
    def __init__(self, deployment: _Optional[str] = ..., companion: _Optional[str] = ..., rule: _Optional[str] = ..., max_in_flight: _Optional[int] = ..., off: _Optional[bool] = ...) -> None: ...

class GetModelRouteRequest(_message.Message):
    __slots__ = ("deployment",)
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    deployment: str
    def __init__(self, deployment: _Optional[str] = ...) -> None: ...
