"""JSON Schema export of the IR kinds and of the chart's values.

`values_schema()` is what `charts/modelops/values.schema.json` holds (a test fails when the checked-in file
drifts): the `Values` document `ir.render` produces, plus the chart-only settings below (`ChartSettings`) that a
rendered document never carries but the chart's own `values.yaml` documents (size profiles, persistence, KEDA,
the ServiceMonitor, the NetworkPolicy, the `scheduler` sub-chart switch). Everything stays strict (unknown keys
are errors) except the `scheduler` key, which belongs to the sub-chart and is checked by the sub-chart's own
schema. `pipeline` is not required: the chart's `values.yaml` cannot give one, and a release without scoring
services and flows renders nothing per job. `ir_schema()` describes the four IR kinds for editors and the UI.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import Field, TypeAdapter

from ir.models import Document, Quantity, Resources, SecretRef, StrictModel
from ir.render import PROFILES, Values

AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod", "ReadOnlyMany"]
ProfileName = Literal["small", "medium", "large"]


def _read_write_once() -> list[AccessMode]:
    return ["ReadWriteOnce"]


def _profiles() -> dict[ProfileName, Resources]:
    return {name: Resources.model_validate(PROFILES[name]) for name in ("small", "medium", "large")}


LabelMap = dict[str, str]
#: Kubernetes objects passed through as they are (NetworkPolicy rules, peers): the API server checks them.
RawObject = dict[str, Any]


class ModelCacheStorage(StrictModel):
    """The volume a scoring service's init container fetches model artifacts into."""

    enabled: bool = Field(default=True, description="A PersistentVolumeClaim per service; false: an emptyDir.")
    size: Quantity = "5Gi"
    storage_class: str = Field(default="", description="Empty: the cluster's default StorageClass.")
    access_modes: list[AccessMode] = Field(
        default_factory=_read_write_once,
        description="ReadWriteMany lets replicas on several nodes share the cache.",
    )


class FileChannelStorage(StrictModel):
    """Volumes of `file` data channels, one per folder the channels' paths live in."""

    size: Quantity = "10Gi"
    storage_class: str = ""
    access_modes: list[AccessMode] = Field(default_factory=_read_write_once)
    existing_claims: dict[str, str] = Field(
        default_factory=dict, description="Data channel name -> an existing PVC mounted instead of a new one."
    )


class ModelStoreStorage(StrictModel):
    existing_claim: str = Field(
        default="", description="A PVC mounted read-only at the path of a file:// global.modelStore."
    )


class Persistence(StrictModel):
    model_cache: ModelCacheStorage = Field(default_factory=ModelCacheStorage)
    file_channels: FileChannelStorage = Field(default_factory=FileChannelStorage)
    model_store: ModelStoreStorage = Field(default_factory=ModelStoreStorage)


class PrometheusTrigger(StrictModel):
    query: str = Field(min_length=1, description="A PromQL query returning one number.")
    threshold: str = Field(min_length=1, description="Target value of the query per replica.")


class RedisAuth(StrictModel):
    """KEDA's redis-streams scaler wants `host:port`, not the channel's redis:// URL: where to read it."""

    address: SecretRef
    password: SecretRef | None = None


class Keda(StrictModel):
    enabled: bool = False
    polling_interval: int = Field(default=30, ge=1)
    cooldown_period: int = Field(default=300, ge=0)
    queue_length: int = Field(default=100, ge=1, description="Target backlog per replica of queue triggers.")
    prometheus_server: str = Field(default="", description="Prometheus address of `prometheus` triggers.")
    prometheus: dict[str, PrometheusTrigger] = Field(
        default_factory=dict, description="Scoring service name -> a Prometheus trigger."
    )
    redis: dict[str, RedisAuth] = Field(default_factory=dict, description="Redis data channel name -> auth.")


class ServiceMonitor(StrictModel):
    enabled: bool = False
    interval: str = "30s"
    scrape_timeout: str = "10s"
    labels: LabelMap = Field(default_factory=dict)


class Peer(StrictModel):
    namespace_selector: LabelMap = Field(default_factory=dict)
    pod_selector: LabelMap = Field(default_factory=dict)


class SchedulerPeer(Peer):
    port: int = Field(default=8787, ge=1, le=65535)


class DnsPeer(Peer):
    port: int = Field(default=53, ge=1, le=65535)


class NetworkPolicySettings(StrictModel):
    enabled: bool = True
    scheduler: SchedulerPeer = Field(default_factory=SchedulerPeer)
    dns: DnsPeer = Field(default_factory=DnsPeer)
    model_store_egress: list[RawObject] = Field(default_factory=list)
    flow_egress: list[RawObject] = Field(default_factory=list)
    http_source_from: list[RawObject] = Field(default_factory=list)
    metrics_from: list[RawObject] = Field(default_factory=list)


class Probe(StrictModel):
    initial_delay_seconds: int = Field(default=0, ge=0)
    period_seconds: int = Field(default=10, ge=1)
    timeout_seconds: int = Field(default=2, ge=1)
    failure_threshold: int = Field(default=3, ge=1)


class ScoringServiceSettings(StrictModel):
    readiness_probe: Probe = Field(default_factory=Probe)
    liveness_probe: Probe = Field(default_factory=Probe)
    startup_seconds: int = Field(default=600, ge=1, description="Longest model load before liveness counts.")
    termination_grace_period_seconds: int = Field(default=40, ge=0)


class CheckpointStorage(StrictModel):
    """The volume a batch flow keeps its checkpoint on, so a pod Kubernetes starts again resumes from it."""

    enabled: bool = Field(
        default=True, description="A PersistentVolumeClaim per batch flow; false: an emptyDir and no retries."
    )
    size: Quantity = "100Mi"
    storage_class: str = Field(default="", description="Empty: the cluster's default StorageClass.")
    access_modes: list[AccessMode] = Field(default_factory=_read_write_once)


class FlowCheckpoint(StrictModel):
    persistence: CheckpointStorage = Field(default_factory=CheckpointStorage)


class ScoringFlowSettings(StrictModel):
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    http_port: int = Field(default=8080, ge=1, le=65535)
    termination_grace_period_seconds: int = Field(default=60, ge=0)
    backoff_limit: int = Field(
        default=3,
        ge=0,
        description="Pods a batch flow's Job may start again after a failure (exit codes 1 and 2 are never "
        "retried); 0 when checkpoint.persistence is off.",
    )
    checkpoint: FlowCheckpoint = Field(default_factory=FlowCheckpoint)
    env: dict[str, str] = Field(default_factory=dict, description="Extra MODELOPS_FLOW_* settings.")


class ChartSettings(StrictModel):
    """Keys of the chart's values.yaml that `ir.render` never writes."""

    size_profiles: dict[ProfileName, Resources] = Field(default_factory=_profiles)
    persistence: Persistence = Field(default_factory=Persistence)
    scoring_service: ScoringServiceSettings = Field(default_factory=ScoringServiceSettings)
    scoring_flow: ScoringFlowSettings = Field(default_factory=ScoringFlowSettings)
    keda: Keda = Field(default_factory=Keda)
    service_monitor: ServiceMonitor = Field(default_factory=ServiceMonitor)
    network_policy: NetworkPolicySettings = Field(default_factory=NetworkPolicySettings)


#: Chart-only top-level keys, in values.yaml order (tests compare values.yaml against this).
CHART_KEYS: tuple[str, ...] = tuple(
    str(field.alias) for field in ChartSettings.model_fields.values() if field.alias is not None
)

_SUBCHART = {
    "type": "object",
    "description": "Values of the `scheduler` sub-chart (charts/scheduler, installed when scheduler.enabled); "
    "checked by the sub-chart's own values.schema.json.",
}


def values_schema() -> dict[str, Any]:
    schema = Values.model_json_schema(by_alias=True, mode="validation")
    chart = ChartSettings.model_json_schema(by_alias=True, mode="validation")
    for name, definition in chart.get("$defs", {}).items():
        existing = schema["$defs"].get(name)
        if existing is not None and existing != definition:
            raise ValueError(f"chart settings model {name} clashes with an IR model of the same name")
        schema["$defs"][name] = definition
    schema["properties"].update(chart["properties"])
    schema["properties"]["scheduler"] = _SUBCHART
    schema["required"] = [key for key in schema["required"] if key != "pipeline"]
    schema["$schema"] = "http://json-schema.org/draft-07/schema#"
    schema["title"] = "modelops chart values"
    return schema


def ir_schema() -> dict[str, Any]:
    schema = TypeAdapter(Document).json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "modelops IR document (modelops/v1)"
    return schema


def dumps(schema: dict[str, Any]) -> str:
    """Stable text of a schema: sorted keys, two-space indent, final newline."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
