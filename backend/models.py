"""The data model: the create and update requests, the service object, and the API's error shape.

This is the one source of truth for what a valid service is: the HTTP API validates request bodies
with these models and the console validates its form with the very same ones. Every value that later
reaches a container option, a network name or a load-balancer config passes through here first, so
nothing with a newline, a control character or an HAProxy directive can be smuggled through.

Field names are the API's PascalCase names (as in the Hyper.sh seed), in the seed's order: the
service object serialises with exactly the seed's keys, in that order.
"""

from __future__ import annotations

import re
import shlex
import signal
from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from backend.haproxy import MAX_CHECK_COUNT, MAX_CHECK_INTERVAL

DEFAULT_MAX_REPLICAS = 100

# Bounds of every list and free-text field: a request is at most 1 MiB (backend/api.py), and within
# that no single field may grow without limit (each value is copied into container options, labels,
# the store and every answer).
REPLICA_SUFFIX_LENGTH = 6  # a replica is named and hostnamed "<Name>-xxxxx"
MAX_NAME_LENGTH = 63 - REPLICA_SUFFIX_LENGTH  # so that hostname stays a DNS label (<= 63)
MAX_WORDS = 1000  # Entrypoint / Cmd words
MAX_WORD_LENGTH = 32 * 1024  # one word of Entrypoint / Cmd, one Env entry (Linux allows 128 KiB)
MAX_SHELL_LINE = 64 * 1024  # Entrypoint / Cmd given as one shell-like line
MAX_ENV = 1000
MAX_LABELS = 1000
MAX_LABEL_VALUE = 4096
MAX_VOLUMES = 100
MAX_PATH_LENGTH = 4096  # WorkingDir, one Volumes entry (Linux PATH_MAX)
MAX_GROUPS = 100
MAX_GROUP_NAME = 63
MAX_SSL_CERT = 64 * 1024  # a PEM chain and its key are a few kB
MAX_REVISION = 2**31 - 1  # revision numbers are stored as SQLite integers (at most 2**63 - 1)

# ---------------------------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------------------------


# tcp: TCP proxy; http: HTTP proxy; https: TLS passed through untouched; httpsTerm: TLS ended at
# the balancer with SSLCert, plain HTTP to the replicas.
ProtocolName = Literal["tcp", "http", "https", "httpsTerm"]
PROTOCOLS: tuple[str, ...] = get_args(ProtocolName)
AlgorithmName = Literal["roundrobin", "leastconn", "source"]
ALGORITHMS: tuple[str, ...] = get_args(AlgorithmName)
SizeName = Literal["s1", "s2", "s3", "s4", "m1", "m2", "m3", "l1", "l2", "l3"]


class ServiceStatus(StrEnum):
    created = "created"
    scaling = "scaling"
    updating = "updating"
    active = "active"
    degraded = "degraded"  # every replica runs, but some fail their health check (DOWN)
    error = "error"
    deleting = "deleting"


# ContainerSize → (memory limit in MiB, CPUs) given to each replica.
CONTAINER_SIZES: dict[str, tuple[int, int]] = {
    "s1": (64, 1),
    "s2": (128, 1),
    "s3": (256, 1),
    "s4": (512, 1),
    "m1": (1024, 1),
    "m2": (2048, 2),
    "m3": (4096, 2),
    "l1": (4096, 4),
    "l2": (8192, 4),
    "l3": (16384, 8),
}


def describe_size(size: str) -> str:
    """'s4' → '512 MB, 1 CPU' (for help texts and selects)."""
    memory_mb, cpus = CONTAINER_SIZES[size]
    memory = f"{memory_mb // 1024} GB" if memory_mb >= 1024 else f"{memory_mb} MB"
    return f"{memory}, {cpus} CPU{'s' if cpus > 1 else ''}"


SIGNAL_NAMES: tuple[str, ...] = tuple(
    sorted(s.name for s in signal.Signals if s.name.startswith("SIG") and not s.name.startswith("SIG_"))
)
COMMON_STOP_SIGNALS: tuple[str, ...] = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL")

# ---------------------------------------------------------------------------------------------
# Patterns (each one says in words what it allows; the words go into the error message)
# ---------------------------------------------------------------------------------------------

NAME_PATTERN = rf"^[a-z0-9]([a-z0-9-]{{0,{MAX_NAME_LENGTH - 2}}}[a-z0-9])?$"
NAME_RULE = (
    f"must be a DNS label: 1-{MAX_NAME_LENGTH} characters of lowercase letters, digits and '-', "
    f"starting and ending with a letter or digit ([a-z0-9]([a-z0-9-]{{0,{MAX_NAME_LENGTH - 2}}}[a-z0-9])?); "
    f"at most {MAX_NAME_LENGTH} so that its replicas' hostnames (<name>-xxxxx) stay within 63"
)
_IMAGE_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# A registry is recognised as Docker does: it has a '.' or a ':port', or is 'localhost'.
_REGISTRY = rf"(?:localhost(?::[0-9]+)?|{_HOST_PART}(?:\.{_HOST_PART})+(?::[0-9]+)?|{_HOST_PART}:[0-9]+)"
IMAGE_PATTERN = re.compile(
    rf"^(?:{_REGISTRY}/)?"
    rf"{_IMAGE_COMPONENT}(?:/{_IMAGE_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
IMAGE_ID_PATTERN = re.compile(r"^sha256:[a-f0-9]{64}$")
ENV_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VOLUME_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
GROUP_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
RESERVED_LABEL_PREFIX = "io.hyperservice."
# Label keys other tools act on (compose, swarm stacks, Traefik's routing): refused like our own, so a
# service can neither pose as another tool's object nor route traffic through a proxy on this engine.
FOREIGN_LABEL_PREFIXES = ("com.docker.compose.", "com.docker.stack.", "traefik.")
VOLUME_NAME_MAX = 128  # the engine's name adds a prefix (tenant, service); a directory name has 255 bytes
# Any control character (newline, carriage return, tab, NUL, escape, ...; DEL and the C1 controls
# U+0080-U+009F, which some terminals obey like ESC sequences) in a free-text value.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _field_error(field: str, reason: str) -> PydanticCustomError:
    """An error raised from a model-level check that still belongs to one field."""
    return PydanticCustomError("field_error", "{reason}", {"field": field, "reason": reason})


def _no_control(value: str, what: str) -> str:
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain newlines or other control characters")
    return value


# ---------------------------------------------------------------------------------------------
# Lenient input forms: the API takes what a person would type, the model keeps one canonical form
# ---------------------------------------------------------------------------------------------


def _shell_words(value: Any) -> Any:
    """Entrypoint/Cmd: a list of strings, or a shell-like line that is split like a shell would."""
    if isinstance(value, str):
        if not value.strip():
            return None
        if len(value) > MAX_SHELL_LINE:
            raise ValueError(f"is longer than {MAX_SHELL_LINE} characters")
        try:
            return shlex.split(value)
        except ValueError as exc:  # unbalanced quotes
            raise ValueError(f"is not a valid shell-like line: {exc}") from None
    return value


def _labels_from_list(value: Any) -> Any:
    """Labels: an object {"k": "v"}, or a list of "k=v" strings as in the seed's description."""
    if isinstance(value, list):
        labels: dict[str, str] = {}
        for item in value:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"list items must be 'key=value' strings, got {item!r}")
            key, _, val = item.partition("=")
            labels[key] = val
        return labels
    return value


def _empty_list_is_null(value: Any) -> Any:
    return None if value == [] else value


def _normalise_signal(value: Any) -> Any:
    if value is None or value == "":
        return "SIGTERM"
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdigit():
            if not 1 <= int(text) <= 64:
                raise ValueError("a signal number must be between 1 and 64")
            return text
        name = text.upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        if name not in SIGNAL_NAMES:
            raise ValueError(f"must be a signal name such as {', '.join(COMMON_STOP_SIGNALS[:4])}, or a number")
        return name
    return value


Word = Annotated[str, StringConstraints(max_length=MAX_WORD_LENGTH)]
PathText = Annotated[str, StringConstraints(max_length=MAX_PATH_LENGTH)]
GroupName = Annotated[str, StringConstraints(max_length=MAX_GROUP_NAME)]
LabelValue = Annotated[str, StringConstraints(max_length=MAX_LABEL_VALUE)]
ShellWords = Annotated[list[Word] | None, BeforeValidator(_shell_words)]
Port = Annotated[int, Field(ge=1, le=65535)]

class RequestBody(BaseModel):
    """A request body: unknown fields are refused, and a whole number is a JSON number.

    Pydantic's lax mode would take `true` or `"3"` for an int field; the API documents integers, so
    anything else is an error here rather than a silent `1` (found by the schema fuzzer)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_are_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None or not isinstance(value, bool | str):
            return value
        kinds = _kinds(cls.model_fields[info.field_name].annotation)
        if int in kinds and type(value) not in kinds:
            raise PydanticCustomError("int_type", "must be a whole number")
        return value


def _kinds(annotation: Any) -> set[Any]:
    """The plain types a field admits: {int, NoneType} for `int | None`."""
    args = get_args(annotation)
    return {annotation} if not args else {kind for arg in args for kind in _kinds(arg)}


# ---------------------------------------------------------------------------------------------
# The create request
# ---------------------------------------------------------------------------------------------


class ServiceSpec(RequestBody):
    """The body of `POST /services/create`: what the operator asks for. Stored as the desired state."""

    Name: str = Field(
        description="Service name: a DNS label, also the prefix of its containers' names",
        json_schema_extra={"pattern": NAME_PATTERN, "maxLength": MAX_NAME_LENGTH},
    )
    Image: str = Field(description="Image the replicas run, e.g. hyperservice/demo-web:1 (pulled when missing)",
                       json_schema_extra={"maxLength": 255})
    WorkingDir: str = Field("", max_length=MAX_PATH_LENGTH,
                            description="Working directory inside the replicas: empty or an absolute path")
    ContainerSize: SizeName = Field(
        "s4", description="Memory limit and CPUs of each replica (s1 64 MB/1 CPU ... l3 16 GB/8 CPUs)"
    )
    SSLCert: str = Field("", max_length=MAX_SSL_CERT,
                         description="PEM certificate chain and private key; only for httpsTerm")
    NetMode: Literal["bridge", ""] = Field("bridge", description="Network mode; only bridge is supported")
    StopSignal: Annotated[str, BeforeValidator(_normalise_signal)] = Field(
        "SIGTERM", description="Signal sent to stop a replica: a name (SIGTERM) or a number"
    )
    ServicePort: Port = Field(description="Port the service answers on, at its address (1-65535)")
    ContainerPort: Port | None = Field(None, description="Port the replicas listen on; defaults to ServicePort")
    Replicas: int = Field(description="Number of replicas")
    HealthCheckInterval: int = Field(5, ge=1, le=MAX_CHECK_INTERVAL,
                                     description="Seconds between health checks of each replica")
    HealthCheckFall: int = Field(3, ge=1, le=MAX_CHECK_COUNT,
                                 description="Consecutive failed checks before a replica is DOWN")
    HealthCheckRise: int = Field(2, ge=1, le=MAX_CHECK_COUNT,
                                 description="Consecutive passed checks before a replica is UP")
    Algorithm: AlgorithmName = Field("roundrobin", description="How the balancer picks a replica")
    Protocol: ProtocolName = Field("tcp", description="tcp, http, https (TLS passed through) or httpsTerm")
    Stdin: bool = Field(False, description="Keep STDIN open in the replicas")
    Tty: bool = Field(False, description="Allocate a pseudo-TTY in the replicas")
    SessionAffinity: bool = Field(False, description="Sticky sessions: a cookie (http) or the client address")
    Entrypoint: ShellWords = Field(None, max_length=MAX_WORDS,
                                   description="Entrypoint: list of strings, or a shell-like line")
    Cmd: ShellWords = Field(None, max_length=MAX_WORDS, description="Command: list of strings, or a shell-like line")
    Env: Annotated[list[Word] | None, BeforeValidator(_empty_list_is_null)] = Field(
        None, max_length=MAX_ENV, description="Environment: list of VAR=value"
    )
    Volumes: Annotated[list[PathText] | None, BeforeValidator(_empty_list_is_null)] = Field(
        None, max_length=MAX_VOLUMES, description="Named volumes: list of volume_name:/container/path[:ro]"
    )
    Labels: Annotated[dict[str, LabelValue] | None, BeforeValidator(_labels_from_list)] = Field(
        None, max_length=MAX_LABELS, description='Labels: {"key": "value"} (a list of key=value is accepted too)'
    )
    SecurityGroups: Annotated[list[GroupName] | None, BeforeValidator(_empty_list_is_null)] = Field(
        None, max_length=MAX_GROUPS, description="Security groups the service belongs to"
    )

    # -- one field at a time ------------------------------------------------------------------

    @field_validator("Name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.match(NAME_PATTERN, value):
            raise ValueError(NAME_RULE)
        return value

    @field_validator("Image")
    @classmethod
    def _image(cls, value: str) -> str:
        return check_image(value)

    @field_validator("WorkingDir")
    @classmethod
    def _working_dir(cls, value: str) -> str:
        _no_control(value, "the path")
        if value and not value.startswith("/"):
            raise ValueError("must be empty or an absolute path such as /app")
        return value

    @field_validator("Replicas")
    @classmethod
    def _replicas(cls, value: int, info: ValidationInfo) -> int:
        return check_replicas(value, info)

    @field_validator("Entrypoint", "Cmd")
    @classmethod
    def _words(cls, value: list[str] | None) -> list[str] | None:
        for word in value or []:
            if _CONTROL.search(word):
                raise ValueError(f"{word!r} must not contain newlines or other control characters "
                                 "(a multi-line script: put ';' between its commands)")
        return value or None

    @field_validator("Env")
    @classmethod
    def _env(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            _no_control(item, f"{item!r}")
            name, sep, val = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} must be VAR=value (no '=' found)")
            if not ENV_NAME_PATTERN.match(name):
                raise ValueError(f"{name!r} is not a valid variable name (letters, digits, _; not starting with a digit)")
        return value

    @field_validator("Volumes")
    @classmethod
    def _volumes(cls, value: list[str] | None) -> list[str] | None:
        targets: set[str] = set()
        for item in value or []:
            _no_control(item, "a volume")
            parts = item.split(":")
            source = parts[0]
            if source.startswith(("/", ".", "~")) or "\\" in source:
                raise ValueError(f"{item!r}: host paths are not allowed, only named volumes (volume_name:/path[:ro])")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
                raise ValueError(f"{item!r} must be volume_name:/container/path or volume_name:/container/path:ro")
            if not VOLUME_NAME_PATTERN.match(source):
                raise ValueError(f"{source!r} is not a valid volume name (letters, digits, '_', '.', '-')")
            if len(source) > VOLUME_NAME_MAX:
                raise ValueError(f"volume name {source[:20]!r}... is longer than {VOLUME_NAME_MAX} characters")
            target = parts[1]
            if not target.startswith("/"):
                raise ValueError(f"{item!r}: the container path must be absolute")
            if target in targets:
                raise ValueError(f"{target!r} is mounted twice")
            targets.add(target)
        return value

    @field_validator("Labels")
    @classmethod
    def _labels(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for key, val in (value or {}).items():
            _no_control(key, f"the label key {key!r}")
            if not LABEL_KEY_PATTERN.match(key):
                raise ValueError(f"{key!r} is not a valid label key (letters, digits, '.', '_', '/', '-')")
            if key.startswith(RESERVED_LABEL_PREFIX):
                raise ValueError(f"{key!r}: keys starting with {RESERVED_LABEL_PREFIX} are reserved")
            foreign = next((p for p in FOREIGN_LABEL_PREFIXES if key.lower().startswith(p)), None)
            if foreign:
                raise ValueError(f"{key!r}: keys starting with {foreign} are reserved (other tools act on them)")
            _no_control(val, f"the value of label {key}")
        return value or None

    @field_validator("SecurityGroups")
    @classmethod
    def _groups(cls, value: list[str] | None) -> list[str] | None:
        for group in value or []:
            if not GROUP_NAME_PATTERN.match(group):
                raise ValueError(f"{group!r} is not a valid group name (letters, digits, '_', '.', '-')")
        return value

    # -- fields that depend on each other ---------------------------------------------------

    @model_validator(mode="after")
    def _cross_field(self) -> ServiceSpec:
        if self.ContainerPort is None:
            self.ContainerPort = self.ServicePort
        if self.Protocol == "httpsTerm":
            if not self.SSLCert:
                raise _field_error("SSLCert", "is required for httpsTerm: a PEM certificate chain and its private key")
            from backend.certs import check_pem_bundle  # cryptography is only loaded when needed

            problem = check_pem_bundle(self.SSLCert)
            if problem:
                raise _field_error("SSLCert", problem)
        elif self.SSLCert:
            raise _field_error("SSLCert", "is only allowed with Protocol httpsTerm")
        return self

    def memory_bytes(self) -> int:
        return CONTAINER_SIZES[self.ContainerSize][0] * 1024 * 1024

    def cpus(self) -> int:
        return CONTAINER_SIZES[self.ContainerSize][1]


def check_image(value: str) -> str:
    if not value:
        raise ValueError("is required: an image reference such as hyperservice/demo-web:1")
    if len(value) > 255 or not (IMAGE_PATTERN.match(value) or IMAGE_ID_PATTERN.match(value)):
        raise ValueError(
            "must be a Docker image reference: [registry/]repository[:tag][@sha256:digest], "
            "lowercase repository, e.g. hyperservice/demo-web:1"
        )
    return value


def check_replicas(value: int, info: ValidationInfo | None = None) -> int:
    limit = DEFAULT_MAX_REPLICAS
    if info is not None and info.context:
        limit = info.context.get("max_replicas", limit)
    if value < 1:
        raise ValueError("must be at least 1")
    if value > limit:
        raise ValueError(f"must be at most {limit}")
    return value


# ---------------------------------------------------------------------------------------------
# The update request
# ---------------------------------------------------------------------------------------------


class ServiceUpdate(RequestBody):
    """The body of `POST /services/{name}/update`: any of Replicas, Image, FIP ("" detaches)."""

    Replicas: int | None = Field(None, description="New number of replicas")
    Image: str | None = Field(None, description="New image: replicas are replaced one at a time",
                              json_schema_extra={"maxLength": 255})
    FIP: str | None = Field(None, max_length=15, description='Floating IP to attach; "" detaches')

    @field_validator("Replicas")
    @classmethod
    def _replicas(cls, value: int | None, info: ValidationInfo) -> int | None:
        return None if value is None else check_replicas(value, info)

    @field_validator("Image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        return None if value is None else check_image(value)

    @field_validator("FIP")
    @classmethod
    def _fip(cls, value: str | None) -> str | None:
        if value:
            import ipaddress

            try:
                ipaddress.IPv4Address(value)
            except ValueError:
                raise ValueError(f"{value!r} is not an IPv4 address") from None
        return value

    @model_validator(mode="after")
    def _something(self) -> ServiceUpdate:
        if self.Replicas is None and self.Image is None and self.FIP is None:
            raise _field_error("", "give at least one of Replicas, Image, FIP")
        return self


# ---------------------------------------------------------------------------------------------
# The service object
# ---------------------------------------------------------------------------------------------


class Service(BaseModel):
    """The service object the API answers with: the seed's keys, in the seed's order.

    Built from a stored, already validated spec plus observed state, so it carries no validation of
    its own. SSLCert is always "" here: key material never leaves the backend.
    """

    Name: str
    Image: str
    WorkingDir: str
    ContainerSize: str
    SSLCert: Literal[""] = ""
    NetMode: str
    StopSignal: str
    ServicePort: int
    ContainerPort: int
    Replicas: int
    HealthCheckInterval: int
    HealthCheckFall: int
    HealthCheckRise: int
    Algorithm: str
    Protocol: str
    Stdin: bool
    Tty: bool
    SessionAffinity: bool
    Entrypoint: list[str] | None
    Cmd: list[str] | None
    Env: list[str] | None
    Volumes: list[str] | None
    Labels: dict[str, str] | None
    SecurityGroups: list[str] | None
    IP: str = ""
    Tenant: str = Field(pattern=r"^[0-9a-f]{32}$")
    FIP: str = ""
    Message: str = ""
    Created: str = ""
    Status: str = ServiceStatus.created.value
    Containers: list[str] | None = None

    @classmethod
    def from_spec(cls, spec: ServiceSpec, **state: Any) -> Service:
        fields = spec.model_dump(exclude={"SSLCert"})
        return cls(**fields, **state)


SERVICE_KEYS: tuple[str, ...] = tuple(Service.model_fields)


class ContainerInfo(BaseModel):
    """One replica as `GET /services/{name}/containers` reports it."""

    Id: str
    Name: str
    State: str  # Docker's state: created, running, restarting, exited, dead, ...
    Health: str  # as the balancer sees it: UP, DOWN, starting; "" when not balanced yet
    HealthSince: str = ""
    Address: str  # IP:ContainerPort on the service's network
    Started: str  # RFC 3339, "" when never started
    Restarts: int
    Image: str = ""
    Outdated: bool = False  # still runs an image older than the service's
    Node: str = ""  # the swarm node it runs on ("" on the docker engine: the one engine)


class VolumeInfo(BaseModel):
    """One named volume of a service as `GET /services/{name}/volumes` reports it."""

    Name: str  # as the service's Volumes give it
    Volume: str  # the name on the engine: scoped to this installation and service
    Target: str  # where the replicas mount it; "" when the current spec no longer mounts it
    ReadOnly: bool
    Created: str  # when the engine created it, "" when no replica has needed it yet


class BalancerFront(BaseModel):
    """One address the service answers on, as its balancer counts it (since that balancer started)."""

    Front: str  # "ip" (the service's own address) or "fip" (its floating IP)
    Address: str  # host address:ServicePort
    Sessions: int  # open now
    Total: int  # sessions since the balancer started
    Rate: int  # sessions in the last second
    Http5xx: int  # 5xx answers sent (http, httpsTerm; 0 otherwise)
    BytesIn: int
    BytesOut: int


class BalancerReplica(BaseModel):
    """One replica's slot as the balancers see it (counters summed over the service's balancers)."""

    Slot: str  # s1, s2, ...
    Replica: str  # container name; "" for a leaving replica still finishing its sessions
    State: str  # UP, DOWN, MAINT, DRAIN (the primary balancer's view)
    Check: str  # last check result: "L7OK 200", "L4OK", "L4CON", ...; "" when none ran yet
    CheckMs: int  # how long that check took
    Sessions: int
    Total: int
    Rate: int
    Share: float  # this replica's fraction of the Total of all replicas listed (0 when none)
    Http5xx: int
    BytesIn: int
    BytesOut: int


class BalancerView(BaseModel):
    """`GET /services/{name}/balancer`: HAProxy's runtime counters for the service's fronts and replicas."""

    Name: str
    Fronts: list[BalancerFront]
    Replicas: list[BalancerReplica]


# ---------------------------------------------------------------------------------------------
# A service's history
# ---------------------------------------------------------------------------------------------

EventType = Literal["status", "replica", "health", "action"]


class ServiceEvent(BaseModel):
    """One entry of a service's history (`GET /services/{name}/events`), kept across restarts.

    Type/Action: `status`/<the new status> (Message: why); `replica`/`start`, `restart` (by the
    engine's restart policy), `die` (ExitCode, OOMKilled), `replace` (dead or DOWN too long),
    `remove` (scaled down, rolled to a new image); `health`/`UP`, `DOWN` (as the balancer sees it);
    `action`/`create`, `scale`, `image`, `fip-attach`, `fip-detach`, `delete` (By: who asked).
    """

    Id: int  # grows with every entry of this backend (across restarts): a reader's "seen up to"
    Time: str  # RFC 3339, UTC
    Type: EventType
    Action: str
    Replica: str = ""  # the replica's name, for replica and health entries
    Message: str = ""
    ExitCode: int | None = None
    OOMKilled: bool = False
    By: str = ""  # who asked, for operator actions: a token's name, "local", "auto" (an automatic rollback)


class RevisionOutcome(StrEnum):
    """What became of a revision: being rolled out, serving, failed (never ready), rolled back
    (automatically or by hand), or replaced by a later revision after it served."""

    rolling = "rolling"
    active = "active"
    failed = "failed"
    rolled_back = "rolled back"
    superseded = "superseded"


class Revision(BaseModel):
    """One revision of a service (`GET /services/{name}/revisions`): every change of its Image is one.

    `Reason` says why it ended as it did ("revision 2's replicas kept exiting (code 1)") or what it
    is ("rollback to revision 1"). `By`: who asked: the name of the API token the request carried
    (backend/tokens.py; "token" for an unnamed one), or "local" (the console, the in-process CLI, an API
    served without a token)."""

    Number: int
    Image: str
    Created: str  # RFC 3339, UTC
    By: str = ""
    Outcome: RevisionOutcome
    Reason: str = ""


class RollbackRequest(RequestBody):
    """The body of `POST /services/{name}/rollback` (optional): the revision to go back to; without
    it, the last revision that was ever fully ready before the current one."""

    Revision: int | None = Field(None, ge=1, le=MAX_REVISION, description="The revision to go back to")


class EventGroup(BaseModel):
    """Recent trouble of one cause, grouped ("1 replica OOM-killed 3 times in the last 5 min")."""

    Cause: str  # "OOM-killed", "exited (code 1)", "replaced", "went DOWN"
    Count: int  # how often, within the window
    Replicas: list[str]  # which replicas, first affected first
    First: str  # RFC 3339: the first and the last time within the window
    Last: str
    Text: str  # the sentence a person reads


class ServiceHistory(BaseModel):
    """`GET /services/{name}/events`: the grouped recent causes on top, then the history itself."""

    Name: str
    Window: int  # seconds back the Summary looks
    Summary: list[EventGroup]  # most frequent cause first; empty when nothing went wrong in the window
    Events: list[ServiceEvent]  # oldest first: the last `limit` entries


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str
    message: str


class ErrorBody(BaseModel):
    """Every error the API answers with: a message and, for bad input, one entry per field."""

    message: str
    errors: list[FieldError] = []


def _friendly(error: ErrorDetails) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    if kind in ("greater_than_equal",):
        return f"must be at least {ctx['ge']}"
    if kind in ("less_than_equal",):
        return f"must be at most {ctx['le']}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be a whole number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind in ("list_type",):
        return "must be a list"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} {'entries' if ctx.get('field_type') == 'Dictionary' else 'items'}"
    if kind == "string_too_long":
        return f"must be at most {ctx['max_length']} characters"
    if kind in ("dict_type",):
        return 'must be an object {"key": "value"}'
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '')}".replace("'", "")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "field_error":
        return str(ctx["reason"])
    return error["msg"]


def field_errors(exc: ValidationError, skip_prefix: tuple[str, ...] = ()) -> list[FieldError]:
    """Turn a pydantic ValidationError into per-field errors a person can act on.

    The field is the top-level request field (e.g. "Env" for a bad item in Env); errors raised by
    cross-field checks name their field themselves.
    """
    result: list[FieldError] = []
    for error in exc.errors():
        loc = [part for part in error["loc"] if part not in skip_prefix]
        field = error["ctx"]["field"] if error["type"] == "field_error" else str(loc[0]) if loc else ""
        message = _friendly(error)
        if len(loc) > 1 and isinstance(loc[1], int) and error["type"] != "value_error":
            message = f"item {loc[1] + 1}: {message}"
        result.append(FieldError(field=field, message=message))
    return result


def summarise(errors: list[FieldError]) -> str:
    """One line for all field errors: 'Replicas: must be at least 1; Name: is required'."""
    return "; ".join(f"{e.field}: {e.message}" if e.field else e.message for e in errors)
