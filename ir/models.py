"""The IR kinds as strict pydantic models: `Model`, `DataChannel`, `ScoringFlow`, `ScoringPipeline`.

These classes check the shape of one document at a time (types, ranges, unknown fields). Everything that
needs more than one document (references, the record schema flowing through the steps) is checked in
`ir.checks`. Field names are the camelCase names of the YAML documents; Python attribute names are snake_case.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

API_VERSION = "modelops/v1"
NAME_MAX = 40
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
PARAM_REF = re.compile(r"\$\{params\.([A-Za-z_][A-Za-z0-9_]*)\}")
#: Context key of a `PydanticCustomError` raised by a model validator: the path, relative to the model, of the
#: field the error is about (`ir.parse` appends it to pydantic's location, which stops at the model).
AT = "at"


class StrictModel(BaseModel):
    """Base of every IR class: unknown fields are errors, YAML keys are camelCase."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        populate_by_name=True,
        str_strip_whitespace=False,
    )


def _dns_label(value: str) -> str:
    if len(value) > NAME_MAX:
        raise PydanticCustomError(
            "name_too_long",
            "name '{value}' is {length} characters long; at most {limit} are allowed "
            "(it becomes part of Kubernetes object names)",
            {"value": value, "length": len(value), "limit": NAME_MAX},
        )
    if not _DNS_LABEL.match(value):
        raise PydanticCustomError(
            "dns_label",
            "'{value}' is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
            {"value": value},
        )
    return value


def _identifier(value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise PydanticCustomError(
            "identifier",
            "'{value}' is not a valid name: use letters, digits and '_', not starting with a digit",
            {"value": value},
        )
    return value


def _field_name(value: str) -> str:
    if not _FIELD_NAME.match(value):
        raise PydanticCustomError(
            "field_name",
            "'{value}' is not a valid field name: use letters, digits, '_', '.', '-', starting with a letter or '_'",
            {"value": value},
        )
    return value


def _sha256(value: str) -> str:
    if not _SHA256.match(value):
        raise PydanticCustomError(
            "sha256",
            "sha256 must be 64 lower-case hexadecimal characters (got {length} characters)",
            {"length": len(value)},
        )
    return value


def parse_duration(value: str) -> int:
    """Seconds in a Go-style duration such as `90s`, `10m`, `1h30m`."""
    match = _DURATION.match(value)
    if not value or not match:
        raise ValueError(value)
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def _duration(value: str) -> str:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise PydanticCustomError(
            "duration", "'{value}' is not a duration: write it like '90s', '10m' or '1h30m'", {"value": value}
        ) from None
    if seconds <= 0:
        raise PydanticCustomError("duration", "a duration must be longer than 0s", {})
    return value


def _quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise PydanticCustomError(
            "quantity", "'{value}' is not a Kubernetes quantity such as '500m', '2' or '1Gi'", {"value": value}
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
Identifier = Annotated[str, AfterValidator(_identifier)]
FieldName = Annotated[str, AfterValidator(_field_name)]
Sha256 = Annotated[str, AfterValidator(_sha256)]
Duration = Annotated[str, AfterValidator(_duration)]
Quantity = Annotated[str, AfterValidator(_quantity)]
Scalar = bool | int | float | str

# ---------------------------------------------------------------------------------------------- common


class Metadata(StrictModel):
    """Kubernetes-style metadata: the name becomes part of Kubernetes object names."""

    name: DnsLabel
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class SecretRef(StrictModel):
    """A reference to a key of a Kubernetes Secret.

    Locally it is read from the environment variable `MODELOPS_SECRET_<NAME>_<KEY>` (see docs/flows.md).
    """

    name: DnsLabel
    key: str = Field(min_length=1, max_length=253)


class SecretSource(StrictModel):
    """Where a credential comes from: always a secret reference, never an inline value."""

    secret_ref: SecretRef


# ---------------------------------------------------------------------------------------------- Model

Runtime = Literal["sklearn", "onnx", "torch", "transformers", "pmml", "python", "mlflow"]
#: Runtimes whose artifacts are unpickled (which runs code): their sha256 is required.
PICKLE_RUNTIMES = frozenset({"sklearn", "torch", "mlflow"})
#: Model uri schemes besides plain paths: local files, web downloads, S3-compatible object storage, and an
#: MLflow model registry (`models:/NAME/VERSION`, `models:/NAME@alias`).
URI_SCHEMES = ("file", "http", "https", "s3", "models")
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class Tensor(StrictModel):
    """A named model input or output, in Open Inference Protocol (KServe V2) terms."""

    name: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:/-]+$")]
    datatype: Datatype
    shape: list[int] = Field(min_length=1, max_length=8)

    @model_validator(mode="after")
    def _shape_dims(self) -> Tensor:
        for i, dim in enumerate(self.shape):
            if dim == 0 or dim < -1:
                raise PydanticCustomError(
                    "shape",
                    "shape dimensions must be positive, or -1 for a variable size (got {dim})",
                    {"dim": dim, AT: ("shape", i)},
                )
        return self

    @property
    def row_width(self) -> int | None:
        """Elements per record (the product of the non-batch dimensions), None when one of them is variable."""
        width = 1
        for dim in self.shape[1:]:
            if dim == -1:
                return None
            width *= dim
        return width


class ResourceList(StrictModel):
    cpu: Quantity | None = None
    memory: Quantity | None = None


class Resources(StrictModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class Autoscaling(StrictModel):
    """Replica bounds; CPU-based by default, queue-length based with KEDA on Kubernetes."""

    enabled: bool = False
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=4, ge=1, le=1000)
    target_cpu_utilization: int = Field(default=70, ge=1, le=100)

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise PydanticCustomError(
                "bounds",
                "minReplicas ({low}) is greater than maxReplicas ({high})",
                {"low": self.min_replicas, "high": self.max_replicas, AT: ("minReplicas",)},
            )
        return self


class Batching(StrictModel):
    """Adaptive batching: concurrent requests are coalesced up to `maxBatchSize` rows or `maxLatencyMs`."""

    enabled: bool = True
    max_batch_size: int = Field(default=64, ge=1, le=1_000_000)
    max_latency_ms: float = Field(default=5.0, ge=0, le=60_000)


class SecretName(StrictModel):
    """A whole Kubernetes Secret by name: the store reads the keys it knows from it (docs/models.md)."""

    name: DnsLabel


class StoreCredentials(StrictModel):
    """Where a model store's endpoint and credentials come from: a Secret, never the IR itself.

    `s3://` reads the keys `endpoint`, `region`, `access-key-id`, `secret-access-key`, `session-token`;
    `models:/` reads `tracking-uri`, `token`, `username`, `password` (each optional but the tracking uri).
    Locally each is the environment variable `MODELOPS_SECRET_<NAME>_<KEY>`, as for data channels.
    """

    secret_ref: SecretName


class ModelSpec(StrictModel):
    runtime: Runtime
    uri: str = Field(min_length=1, max_length=2048)
    sha256: Sha256 | None = None
    version: str = Field(default="1", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    inputs: list[Tensor] = Field(min_length=1)
    outputs: list[Tensor] = Field(min_length=1)
    options: dict[Identifier, Scalar] = Field(default_factory=dict)
    resources: Resources | None = None
    replicas: int = Field(default=1, ge=0, le=1000)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    batching: Batching = Field(default_factory=Batching)
    credentials: StoreCredentials | None = None

    @model_validator(mode="after")
    def _checks(self) -> ModelSpec:
        scheme = uri_scheme(self.uri)
        if scheme and scheme not in URI_SCHEMES:
            raise PydanticCustomError(
                "uri",
                "uri scheme '{scheme}' is not supported: use a relative path, file://, http(s)://, s3:// or models:/",
                {"scheme": scheme, AT: ("uri",)},
            )
        if not scheme and self.uri.startswith("/"):
            raise PydanticCustomError(
                "uri",
                "an absolute path must be written as a file:// URI (file://{uri})",
                {"uri": self.uri, AT: ("uri",)},
            )
        if self.sha256 is None and self.runtime in PICKLE_RUNTIMES:
            raise PydanticCustomError(
                "sha256_required",
                "sha256 is required for runtime '{runtime}': its artifacts are unpickled, which runs code",
                {"runtime": self.runtime, AT: ("sha256",)},
            )
        for kind, tensors in (("input", self.inputs), ("output", self.outputs)):
            seen: set[str] = set()
            for i, tensor in enumerate(tensors):
                if tensor.name in seen:
                    raise PydanticCustomError(
                        "duplicate",
                        "{kind} '{name}' is declared twice",
                        {"kind": kind, "name": tensor.name, AT: (f"{kind}s", i, "name")},
                    )
                seen.add(tensor.name)
        return self


def uri_scheme(uri: str) -> str:
    """The lower-cased scheme of a model uri (`models:/x/1` -> `models`), '' for a plain path."""
    if uri.startswith("models:/"):
        return "models"
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


class Model(StrictModel):
    api_version: Literal["modelops/v1"]
    kind: Literal["Model"]
    metadata: Metadata
    spec: ModelSpec


# ---------------------------------------------------------------------------------------------- DataChannel

FieldTypeName = Literal["boolean", "integer", "number", "string", "array", "object"]
_FORMATS: dict[str, tuple[str | None, ...]] = {
    "boolean": (None,),
    "integer": (None, "int32", "int64"),
    "number": (None, "float", "double"),
    "string": (None, "date", "date-time", "bytes"),
    "array": (None,),
    "object": (None,),
}


class FieldType(StrictModel):
    """An OpenAPI-style type: `integer` + `int32`/`int64`, `number` + `float`/`double`, `string` + `date`…"""

    type: FieldTypeName
    format: str | None = None
    items: FieldType | None = None

    @model_validator(mode="after")
    def _format_fits(self) -> FieldType:
        allowed = _FORMATS[self.type]
        if self.format not in allowed:
            names = ", ".join(repr(f) for f in allowed if f) or "none"
            raise PydanticCustomError(
                "format",
                "format '{format}' does not apply to type '{type}' (allowed: {names})",
                {"format": self.format, "type": self.type, "names": names, AT: ("format",)},
            )
        if self.type == "array" and self.items is None:
            raise PydanticCustomError(
                "items", "an array field needs 'items' (the type of its elements)", {AT: ("items",)}
            )
        if self.type != "array" and self.items is not None:
            raise PydanticCustomError("items", "'items' applies only to type 'array'", {AT: ("items",)})
        return self

    def normalised(self) -> FieldType:
        """The same type with its default format made explicit (`integer` -> `integer/int64`)."""
        default = {"integer": "int64", "number": "double"}.get(self.type)
        items = self.items.normalised() if self.items else None
        return FieldType(type=self.type, format=self.format or default, items=items)

    def describe(self) -> str:
        if self.type == "array" and self.items is not None:
            return f"array of {self.items.describe()}"
        return f"{self.type} ({self.format})" if self.format else self.type


class RecordField(FieldType):
    name: FieldName
    nullable: bool = False
    description: str | None = None

    def type_only(self) -> FieldType:
        return FieldType(type=self.type, format=self.format, items=self.items)


class RecordSchema(StrictModel):
    fields: list[RecordField] = Field(default_factory=list, max_length=10_000)
    infer: bool | None = Field(
        default=None,
        description="Read the fields from the file at install (a file source only): its CSV header and "
        "first rows, or its Parquet schema. The inferred fields are recorded in the job's values.",
    )  # None, not False, by default: the canonical IR (and digest) of a schema that lists its fields is unchanged

    @model_validator(mode="after")
    def _unique(self) -> RecordSchema:
        if self.infer and self.fields:
            raise PydanticCustomError(
                "infer", "a schema either lists its fields or says 'infer: true', not both", {AT: ("infer",)}
            )
        if not self.infer and not self.fields:
            raise PydanticCustomError(
                "fields", "a schema needs at least one field, or 'infer: true' on a file source", {AT: ("fields",)}
            )
        seen: set[str] = set()
        for i, field in enumerate(self.fields):
            if field.name in seen:
                raise PydanticCustomError(
                    "duplicate", "field '{name}' is declared twice", {"name": field.name, AT: ("fields", i, "name")}
                )
            seen.add(field.name)
        return self


class CsvDialect(StrictModel):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    quote_char: str = Field(default='"', min_length=1, max_length=1)
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: [""])


class FileOptions(StrictModel):
    path: str = Field(min_length=1, max_length=4096, description="A file path, or a glob for sources.")
    format: Literal["csv", "jsonl", "parquet"]
    compression: Literal["none", "gzip", "auto"] = "auto"
    csv: CsvDialect | None = None

    @model_validator(mode="after")
    def _csv_only(self) -> FileOptions:
        if self.csv is not None and self.format != "csv":
            raise PydanticCustomError("csv", "'csv' options apply only to format 'csv'", {AT: ("csv",)})
        return self


class SqlOptions(StrictModel):
    connection: SecretSource
    query: str | None = Field(default=None, min_length=1)
    table: str | None = Field(default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    create_table: bool = False
    fetch_size: int = Field(default=10_000, ge=1, le=1_000_000)


class RedisOptions(StrictModel):
    url: SecretSource
    stream: str = Field(min_length=1, max_length=256)
    consumer_group: str | None = Field(default=None, min_length=1, max_length=256)
    max_len: int | None = Field(default=None, ge=1)


class RabbitmqOptions(StrictModel):
    url: SecretSource
    queue: str = Field(min_length=1, max_length=255)
    prefetch: int = Field(default=1000, ge=1, le=65_535)


class HttpOptions(StrictModel):
    path: str = Field(min_length=1, max_length=256, pattern=r"^/[A-Za-z0-9_./-]*$")


ChannelType = Literal["file", "sql", "redis", "rabbitmq", "http"]
CHANNEL_TYPES: tuple[str, ...] = ("file", "sql", "redis", "rabbitmq", "http")
BATCH_TYPES = frozenset({"file", "sql"})
STREAM_TYPES = frozenset({"redis", "rabbitmq", "http"})


class DataChannelSpec(StrictModel):
    direction: Literal["source", "sink"]
    type: ChannelType
    record_schema: RecordSchema = Field(alias="schema")
    file: FileOptions | None = None
    sql: SqlOptions | None = None
    redis: RedisOptions | None = None
    rabbitmq: RabbitmqOptions | None = None
    http: HttpOptions | None = None

    @model_validator(mode="after")
    def _options_match_type(self) -> DataChannelSpec:
        present = [t for t in CHANNEL_TYPES if getattr(self, t) is not None]
        if self.type not in present:
            raise PydanticCustomError(
                "options",
                "a channel of type '{type}' needs its options under '{type}'",
                {"type": self.type, AT: (self.type,)},
            )
        others = [t for t in present if t != self.type]
        if others:
            raise PydanticCustomError(
                "options",
                "options '{others}' do not apply to a channel of type '{type}'",
                {"others": "', '".join(others), "type": self.type, AT: (others[0],)},
            )
        if self.sql is not None:
            if self.direction == "source" and (self.sql.query is None) == (self.sql.table is None):
                raise PydanticCustomError("sql", "a sql source needs exactly one of 'query' or 'table'", {AT: ("sql",)})
            if self.direction == "sink" and self.sql.table is None:
                raise PydanticCustomError("sql", "a sql sink needs 'table'", {AT: ("sql", "table")})
            if self.direction == "sink" and self.sql.query is not None:
                raise PydanticCustomError("sql", "'query' applies only to a sql source", {AT: ("sql", "query")})
        if self.redis is not None and self.direction == "source" and self.redis.consumer_group is None:
            raise PydanticCustomError("redis", "a redis source needs 'consumerGroup'", {AT: ("redis", "consumerGroup")})
        if self.record_schema.infer and (self.type != "file" or self.direction != "source"):
            raise PydanticCustomError(
                "infer",
                "'infer: true' applies only to a file source (its fields are read from the file at install); "
                "list the fields of a {direction} of type '{type}'",
                {"direction": self.direction, "type": self.type, AT: ("schema", "infer")},
            )
        return self

    @property
    def options(self) -> BaseModel:
        options = getattr(self, self.type)
        assert isinstance(options, BaseModel)
        return options


class DataChannel(StrictModel):
    api_version: Literal["modelops/v1"]
    kind: Literal["DataChannel"]
    metadata: Metadata
    spec: DataChannelSpec


# ---------------------------------------------------------------------------------------------- ScoringFlow


class MapStep(StrictModel):
    """Set, rename, cast and drop fields; set values may reference parameters as `${params.name}`."""

    set: dict[FieldName, Scalar] = Field(default_factory=dict)
    rename: dict[FieldName, FieldName] = Field(default_factory=dict)
    cast: dict[FieldName, FieldType] = Field(default_factory=dict)
    drop: list[FieldName] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> MapStep:
        if not (self.set or self.rename or self.cast or self.drop):
            raise PydanticCustomError("empty", "a map step needs at least one of set, rename, cast, drop", {})
        return self


class FieldSelector(StrictModel):
    """Fields of the record schema chosen by a rule rather than listed: exactly one of
    `{from: p0, to: p63}` (a run of fields, both ends included), `{prefix: p}`, or
    `{all: true, except: [id]}`. It resolves against the schema at its step, in schema order, when the IR is
    checked; the rendered values hold the explicit list (docs/ir.md, "Field selectors")."""

    from_: FieldName | None = Field(default=None, alias="from")
    to: FieldName | None = None
    prefix: str | None = Field(default=None, min_length=1, max_length=128)
    all: bool | None = None
    except_: list[FieldName] | None = Field(default=None, alias="except")

    @model_validator(mode="after")
    def _one_form(self) -> FieldSelector:
        forms = [
            name
            for name, given in (
                ("from/to", self.from_ is not None or self.to is not None),
                ("prefix", self.prefix is not None),
                ("all", self.all is not None),
            )
            if given
        ]
        if len(forms) != 1:
            raise PydanticCustomError(
                "selector",
                "a field selector takes exactly one of {forms} (found {found})",
                {"forms": "{from, to}, {prefix} or {all: true, except}", "found": ", ".join(forms) or "none"},
            )
        if forms == ["from/to"] and (self.from_ is None or self.to is None):
            missing = "to" if self.to is None else "from"
            raise PydanticCustomError(
                "selector",
                "a {form} selector needs both ends: '{missing}' is missing",
                {"form": "{from, to}", "missing": missing},
            )
        if self.all is False:
            raise PydanticCustomError("selector", "'all' can only be true (list the fields instead)", {AT: ("all",)})
        if self.except_ is not None and self.all is None:
            raise PydanticCustomError("selector", "'except' goes with 'all: true'", {AT: ("except",)})
        return self

    def describe(self) -> str:
        """The selector as written: `{from: p0, to: p63}`, `{prefix: p}`, `{all: true, except: [id]}`."""
        if self.prefix is not None:
            return f"{{prefix: {self.prefix}}}"
        if self.all:
            rest = f", except: [{', '.join(self.except_)}]" if self.except_ else ""
            return f"{{all: true{rest}}}"
        return f"{{from: {self.from_}, to: {self.to}}}"


def _fields_form(value: Any) -> str:
    return "FieldSelector" if isinstance(value, dict | FieldSelector) else "FieldList"


#: A list of field names, or a selector: a mapping is validated only as a selector (so its errors are the
#: selector's own, not "expected a list"); the tags are stripped from error locations by `ir.parse`.
FieldsOrSelector = Annotated[
    Annotated[list[FieldName], Tag("FieldList")] | Annotated[FieldSelector, Tag("FieldSelector")],
    Discriminator(_fields_form),
]


class ScoreInput(StrictModel):
    """Model input `input` fed from one record field, or from several fields side by side (listed, or chosen
    by a `FieldSelector`)."""

    input: str = Field(min_length=1)
    field: FieldName | None = None
    fields: FieldsOrSelector | None = Field(default=None)

    @model_validator(mode="after")
    def _one_source(self) -> ScoreInput:
        if (self.field is None) == (self.fields is None):
            raise PydanticCustomError("source", "give exactly one of 'field' or 'fields'", {})
        if isinstance(self.fields, list) and not self.fields:
            raise PydanticCustomError("empty", "'fields' lists no field", {AT: ("fields",)})
        return self

    @property
    def field_names(self) -> list[str]:
        """The fields fed, in order; a selector must have been resolved first (`ir.load` does it)."""
        if isinstance(self.fields, FieldSelector):
            raise ValueError(f"input '{self.input}': selector {self.fields.describe()} was not resolved")
        return self.fields if self.fields is not None else [self.field or ""]


class ScoreOutput(StrictModel):
    """Model output `output` written as one field, split over several fields, or reduced to one value."""

    output: str = Field(min_length=1)
    field: FieldName | None = None
    fields: list[FieldName] | None = Field(default=None, min_length=1)
    reduce: Literal["max", "argmax"] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> ScoreOutput:
        if (self.field is None) == (self.fields is None):
            raise PydanticCustomError("target", "give exactly one of 'field' or 'fields'", {})
        if self.reduce is not None and self.field is None:
            raise PydanticCustomError("reduce", "'reduce' writes one value: use it with 'field'", {AT: ("reduce",)})
        return self


class ScoreStep(StrictModel):
    model: str = Field(min_length=1)
    inputs: list[ScoreInput] = Field(min_length=1)
    outputs: list[ScoreOutput] = Field(min_length=1)


FilterOp = Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "notIn", "isNull", "notNull"]


class FilterStep(StrictModel):
    """Keep the records for which `field op value` holds."""

    field: FieldName
    op: FilterOp
    value: Scalar | list[Scalar] | None = None


class PythonStep(StrictModel):
    """A user function `function(batch) -> batch` from `module`; it declares the fields it adds and removes."""

    module: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")
    function: Identifier
    adds: list[RecordField] = Field(default_factory=list)
    removes: list[FieldName] = Field(default_factory=list)


STEP_KINDS: tuple[str, ...] = ("map", "score", "filter", "python")


class Step(StrictModel):
    """One step of a flow: exactly one of `map`, `score`, `filter`, `python`, and an optional name."""

    name: Identifier | None = None
    map: MapStep | None = None
    score: ScoreStep | None = None
    filter: FilterStep | None = None
    python: PythonStep | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Step:
        present = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(present) != 1:
            raise PydanticCustomError(
                "step_kind",
                "a step needs exactly one of map, score, filter, python (found {found})",
                {"found": ", ".join(present) or "none"},
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)


class ErrorPolicy(StrictModel):
    """What happens to a record that fails: fail the job, skip it, or send it to a dead-letter sink."""

    mode: Literal["fail", "skip", "deadLetter"] = "fail"
    sink: str | None = None

    @model_validator(mode="after")
    def _sink(self) -> ErrorPolicy:
        if self.mode == "deadLetter" and self.sink is None:
            raise PydanticCustomError("sink", "mode 'deadLetter' needs 'sink' (a sink data channel)", {AT: ("sink",)})
        if self.mode != "deadLetter" and self.sink is not None:
            raise PydanticCustomError("sink", "'sink' applies only to mode 'deadLetter'", {AT: ("sink",)})
        return self


class ScoringFlowSpec(StrictModel):
    source: str = Field(min_length=1)
    sinks: list[str] = Field(min_length=1)
    steps: list[Step] = Field(min_length=1, max_length=1000)
    batch_size: int = Field(default=1000, ge=1, le=1_000_000)
    error_policy: ErrorPolicy = Field(default_factory=ErrorPolicy)


class ScoringFlow(StrictModel):
    api_version: Literal["modelops/v1"]
    kind: Literal["ScoringFlow"]
    metadata: Metadata
    spec: ScoringFlowSpec


# ---------------------------------------------------------------------------------------------- ScoringPipeline

ParamType = Literal["string", "integer", "number", "boolean"]


class Parameter(StrictModel):
    name: Identifier
    type: ParamType = "string"
    default: Scalar | None = None
    description: str | None = None

    @property
    def required(self) -> bool:
        return self.default is None


class Environment(StrictModel):
    namespace: DnsLabel = "default"


class Timeouts(StrictModel):
    install: Duration = "10m"
    wait: Duration = "24h"
    uninstall: Duration = "10m"


class ScoringPipelineSpec(StrictModel):
    flows: list[str] = Field(min_length=1)
    mode: Literal["batch", "streaming"]
    parameters: list[Parameter] = Field(default_factory=list)
    environment: Environment = Field(default_factory=Environment)
    timeouts: Timeouts = Field(default_factory=Timeouts)

    @model_validator(mode="after")
    def _unique(self) -> ScoringPipelineSpec:
        for what, names in (("flow", self.flows), ("parameter", [p.name for p in self.parameters])):
            seen: set[str] = set()
            for i, name in enumerate(names):
                if name in seen:
                    at: tuple[str | int, ...] = ("flows", i) if what == "flow" else ("parameters", i, "name")
                    raise PydanticCustomError(
                        "duplicate", "{what} '{name}' is listed twice", {"what": what, "name": name, AT: at}
                    )
                seen.add(name)
        return self


class ScoringPipeline(StrictModel):
    api_version: Literal["modelops/v1"]
    kind: Literal["ScoringPipeline"]
    metadata: Metadata
    spec: ScoringPipelineSpec


Document = Model | DataChannel | ScoringFlow | ScoringPipeline
KINDS: dict[str, type[StrictModel]] = {
    "Model": Model,
    "DataChannel": DataChannel,
    "ScoringFlow": ScoringFlow,
    "ScoringPipeline": ScoringPipeline,
}


def param_refs(value: Any) -> list[str]:
    """Names of the parameters referenced as `${params.name}` anywhere inside `value`."""
    found: list[str] = []
    if isinstance(value, str):
        found.extend(PARAM_REF.findall(value))
    elif isinstance(value, dict):
        for item in value.values():
            found.extend(param_refs(item))
    elif isinstance(value, list):
        for item in value:
            found.extend(param_refs(item))
    return found
