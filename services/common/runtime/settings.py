"""Configuration from the environment, one object per service (pydantic-settings).

Defaults work on the local runtime (`./dev up`); every field is a documented variable in the
README. `TOPIC_PREFIX` exists for test isolation only: production uses the contract's names.

`check_environment` says what is wrong with an environment before anything starts, one line
per problem naming the variable as it was typed and the rule it breaks; a service started
with bad settings prints those lines and exits with code 2 (`app.serve`).
"""

import difflib
import getpass
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from functools import cache
from typing import Annotated, Any, ClassVar, Literal, Self, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import annotated_types as at
from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.messaging.connection import VARIABLES, KafkaAccess
from services.common.runtime.secrets import redact

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SECRET = frozenset({"database_url", "otel_endpoint", "kafka_password", "jwks_url"})
"""Settings whose value may hold a password or a token: no message shows it (any other's value
is shown masked, `secrets.redact`, then cut)."""


def _must(check: Any, rule: str) -> AfterValidator:
    """A validator raising `rule` (which names no value) when `check(value)` is false."""

    def validate(value: Any) -> Any:
        if not check(value):
            raise ValueError(rule)
        return value

    return AfterValidator(validate)


def _servers(value: str) -> bool:
    """host:port, or host (port 9092), separated by commas, as aiokafka reads them."""
    for server in value.split(","):
        host, colon, port = server.strip().rpartition(":")
        if not colon:
            host, port = port, "9092"
        if not host.strip("[]") or not port.isdigit() or not 0 < int(port) < 65536:
            return False
    return True


def _seconds(value: Any) -> Any:
    """A duration given as a number of seconds ("300", "1.5"), else ISO 8601 as pydantic reads it."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


BootstrapServers = Annotated[str, _must(_servers, "must be host:port pairs separated by commas, like 127.0.0.1:9092")]


def _userinfo_encoded(url: str) -> bool:
    """A `/`, `?` or `#` left as is in the user or the password ends the URL's authority there:
    its `@` then comes after it, and the rest of the password is read as the port, the database
    or the options (asyncpg's error quoted it)."""
    parts = urlsplit(url)
    # An option may hold an @ in a user's name (`?user=name@server`) or a path (`?host=/run/a@b`),
    # not elsewhere: `?opt=x@db/feo` is what a password's unencoded ? leaves.
    options = [o.partition("=") for o in parts.query.split("&")]
    misplaced = any(
        "@" in (value if eq else key) and key != "user" and not value.startswith("/") for key, eq, value in options
    )
    return "@" not in parts.path + parts.fragment and not misplaced


def _port_numbers(url: str) -> bool:
    """Each host's port, if any, a number from 0 to 65535 (asyncpg takes several hosts,
    `host1:5432,host2:5432`, which urllib does not)."""
    for host in urlsplit(url).netloc.rpartition("@")[2].split(","):
        port = host.rpartition("]")[2] if host.startswith("[") else host
        number = port.rpartition(":")[2] if ":" in port else ""
        if number and not (number.isdigit() and int(number) <= 65535):
            return False
    return True


def names_its_user(url: str) -> bool:
    """Whether a PostgreSQL URL names its user, in it or as its `user` parameter."""
    parts = urlsplit(url)
    return bool(parts.username) or any(k == "user" and v for k, v in parse_qsl(parts.query))


def _names_a_user(url: str) -> bool:
    """A user in the URL, or PGUSER (this process's: not that of an environment checked for
    elsewhere), else the process's user's name: asyncpg and libpq default to it, and a process
    run under a user id without a name (a container's arbitrary user: deploy/k8s) failed on it
    with a KeyError at its first connection."""
    if names_its_user(url) or os.environ.get("PGUSER"):
        return True
    try:
        return bool(getpass.getuser())
    except (KeyError, OSError):
        return False


PostgresUrl = Annotated[
    str,
    _must(
        lambda url: urlsplit(url).scheme in ("postgresql", "postgres"),
        "must be a PostgreSQL URL, postgresql://user:password@host:port/database",
    ),
    _must(_userinfo_encoded, "its user and password must have / ? and # percent-encoded (%2F %3F %23)"),
    # asyncpg reads a raw space in a password, but a URL ends at white space for whoever masks
    # it in a text (secrets.redact): every line naming the database would show the password.
    _must(lambda url: not any(c.isspace() for c in url), "must hold no space: percent-encode it (%20)"),
    _must(
        _port_numbers,
        "its port must be a number from 0 to 65535 (else a / ? or # in its password is not percent-encoded: "
        "%2F %3F %23)",
    ),
    _must(_names_a_user, "must name its user (postgresql://user@…): this process's user has no name to default to"),
]
SchemaName = Annotated[
    str,
    _must(
        re.compile(r"[a-z_][a-z0-9_]{0,62}").fullmatch,
        "must be a PostgreSQL name in lower case: letters, digits and _, not starting with a digit, 63 at most",
    ),
]
TopicPrefix = Annotated[
    str,
    _must(
        re.compile(r"[A-Za-z0-9._-]{0,200}").fullmatch, "may hold only letters, digits, '.', '_' and '-', 200 at most"
    ),
]


def _http_url(url: str) -> bool:
    """An http(s) URL naming a host, its port (if any) one: `https://h:99999/x` went on to the
    service's start, which refused it (exit code 3, not a setting's 2)."""
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port beyond 65535 or not a number, a bracketed host that is no address
        return False


HttpUrl = Annotated[str, _must(_http_url, "must be an http:// or https:// URL naming a host (and a port: 1–65535)")]
LogLevel = Annotated[str, AfterValidator(str.upper), _must(LEVELS.__contains__, f"must be one of {', '.join(LEVELS)}")]
Duration = Annotated[timedelta, BeforeValidator(_seconds)]


MAX_CLOCK_SKEW = timedelta(days=3650)
"""MAX_CLOCK_SKEW's bound: beyond ten years `time-futur` is out of use anyway, and far beyond it
the clock plus the skew is no datetime (every record's check failed, its batch taken again for ever)."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", allow_inf_nan=False)
    REQUEST_TIMEOUTS: ClassVar[tuple[str, ...]] = ()
    """The settings bounding what a request does once its body is read (`requests_grace_seconds`)."""

    kafka_bootstrap_servers: BootstrapServers = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    kafka_security_protocol: Literal["SASL_SSL", "SSL", "PLAINTEXT"] = Field(
        "SASL_SSL",
        description="SASL_SSL (CONTRACTS.md, Identity), SSL (a client certificate names the principal); "
        "PLAINTEXT only on an unsecured broker",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    kafka_username: str | None = Field(None, description="SCRAM user of this service's Kafka principal")
    kafka_password: str | None = Field(None, description="its password", repr=False)
    kafka_ca_file: str | None = Field(None, description="PEM file of the CA of the brokers' certificates")
    kafka_cert_file: str | None = Field(None, description="PEM file of this service's client certificate (SSL)")
    kafka_key_file: str | None = Field(None, description="PEM file of its private key (SSL)")
    database_url: PostgresUrl = Field(
        "postgresql://postgres@127.0.0.1:5432/former_equiper_outiller",
        description="PostgreSQL URL; each service works in its own schema of that database",
        repr=False,
    )
    db_schema: SchemaName | None = Field(None, description="schema of this service (default: its name)")
    topic_prefix: TopicPrefix = Field("", description="prefix of every topic and consumer group (tests)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535, description="port of /health (and of the service's API)")

    # Batches only grow this large when records wait (a backlog): a busy service then pays each
    # transaction's fixed cost once per 2,000 records. Measured (./dev bench, issue 8): ingress
    # 1.6x that of 500, the same or lower latency at 200 to 2,000 ev/s.
    batch_max_records: int = Field(2000, ge=1, description="records handled per transaction")
    batch_wait_ms: int = Field(
        50, ge=1, le=5000, description="when no record waits, how long the consumer waits for one before it looks again"
    )
    batch_top_up_ms: int = Field(
        10,
        ge=0,
        le=5000,
        description="once a batch's records are taken, how long to wait for those the next fetch brings, which "
        "came while the previous batch was handled (else they wait for the next batch); 0: no top-up",
    )
    fetch_max_wait_ms: int = Field(
        100,
        ge=1,
        le=5000,
        description="longest the broker holds a fetch for records to come; a partition read to its end is "
        "fetched again only once the fetch in flight returns, so this bounds how long its next record waits",
    )
    consumer_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="static membership of the consumer group (group.instance.id), unique per replica (a pod's "
        "name): a replica restarted under the same id gets its partitions back at once, without the rebalance "
        "that waits for the killed one's session to expire",
    )
    shutdown_grace_seconds: float = Field(
        15,
        gt=0,
        le=300,
        description="on SIGTERM, how long the HTTP requests in flight may take to end (beyond it they are cut; "
        "the passerelle's requests get their own timeouts more), then the batch in flight to commit, then the relay "
        "to publish what is left in the outbox; the process then exits 0",
    )
    outbox_poll_ms: int = Field(1000, ge=10, description="relay poll period when not woken")
    outbox_batch_records: int = Field(2000, ge=1, description="records the relay publishes per round")
    inbox_retention_days: int = Field(
        30,
        ge=0,
        description="forget accepted ids, dead letters and DLQ copies set aside after this many days (0: never)",
    )
    max_clock_skew: Duration = Field(
        timedelta(minutes=5),
        ge=timedelta(0),
        le=MAX_CLOCK_SKEW,  # an event's reception time plus more overflows a datetime
        description="an event whose time is later than the clock plus this is time-futur",
    )
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_endpoint: HttpUrl | None = Field(None, description="OTLP/HTTP endpoint when otel_exporter=otlp", repr=False)
    log_format: Literal["auto", "console", "json"] = "auto"
    log_level: LogLevel = "INFO"
    library_log_level: LogLevel = Field("WARNING", description="level of the libraries' own lines (Kafka client…)")
    metrics_counts_max_age_seconds: float = Field(
        30,
        ge=0,
        le=3600,
        description="how old the service's own counts on /metrics (ressources' open alerts by kind, its "
        "re-evaluations pending) may be when scraped: read again at a scrape past this (0: at every scrape)",
    )
    # Start and stay (services/common/runtime/startup.py).
    startup_timeout_seconds: float = Field(
        120, gt=0, description="wait this long for Kafka and PostgreSQL at start, then exit non-zero"
    )
    unhealthy_exit_seconds: float = Field(
        300, ge=0, description="exit with code 1 once Kafka or PostgreSQL has been unreachable this long (0: never)"
    )

    @property
    def background_connections(self) -> int:
        """Connections the service's background work holds at once (ressources' re-evaluation
        workers), beside those of the consumer, the relay and the probes (POOL_SIZE)."""
        return 0

    @property
    def requests_grace_seconds(self) -> float:
        """How long a stop waits for the HTTP requests in flight, then cuts them: a client sending
        its body or reading its answer slowly would otherwise hold the stop until the process is
        killed, nothing drained."""
        return self.shutdown_grace_seconds + sum(getattr(self, name) for name in self.REQUEST_TIMEOUTS)

    @classmethod
    def of(cls, settings: "ServiceSettings") -> Self:
        """`settings` as this service's own class: a shared ServiceSettings (what the tests make)
        completed with the service's own fields, from the environment or their defaults."""
        return settings if isinstance(settings, cls) else cls(**vars(settings))

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def unprefixed(self, topic: str) -> str:
        return topic.removeprefix(self.topic_prefix)


KafkaUse = Literal["connects", "elsewhere", "none"]
"""How a process whose environment is checked uses Kafka (check_environment)."""


def settings_or_exit(prog: str, kafka: KafkaUse = "connects") -> ServiceSettings:
    """The shared settings from this process's environment, for a command line tool: a bad
    value ends it with one line per problem naming the variable (exit 2), never a traceback
    that would show the value (a DATABASE_URL's password)."""
    if problems := check_environment(os.environ, kafka=kafka):
        for problem in problems:
            print(f"{prog}: {problem}", file=sys.stderr)
        raise SystemExit(2)
    return ServiceSettings()


def tool_schemas(
    prog: str, services: Sequence[str] | None, every: Sequence[str], settings: ServiceSettings
) -> tuple[list[str], bool]:
    """The schemas an operator's tool works on, and whether the operator named them (then each
    must be there): each service's own (`every`'s, or the `--service` given), or DB_SCHEMA when
    it names one service's (then that service alone, as `./dev rebuild` takes it; with none or
    several, exit 2: which one would it be?)."""
    if settings.db_schema is None:
        return list(services or every), services is not None
    if services is None or len(services) != 1:
        print(f"{prog}: DB_SCHEMA names one service's schema: give that service with one --service", file=sys.stderr)
        raise SystemExit(2)
    return [settings.db_schema], True


def check_environment(
    environ: Mapping[str, str],
    classes: Iterable[type[ServiceSettings]] = (ServiceSettings,),
    kafka: KafkaUse = "connects",
) -> list[str]:
    """What the services of `classes` would refuse in `environ`: one line per problem, naming
    the variable as typed (upper case unless typed otherwise) and the rule; never the value of
    a setting that may hold a secret. Empty when they would all start. And what would keep the
    Kafka access from connecting (KafkaAccess.unusable): over SSL a certificate or key not given,
    and, for a process that `connects`, TLS files it cannot read; not the files for an
    environment meant `elsewhere` (a pod's), nothing for a command that does not use Kafka."""
    typed = {name.lower(): name for name in environ}
    problems: list[str] = []
    for cls in classes:
        given: dict[str, Any] = {field: environ[typed[field]] for field in cls.model_fields if field in typed}
        try:
            checked = _from_values_only(cls)(**given)
        except ValidationError as error:
            for e in error.errors():
                field = str(e["loc"][0])
                line = _problem(typed[field], field, given[field], cls.model_fields[field], e)
                if line not in problems:
                    problems.append(line)
            continue
        # The broker's client is made with the TLS files before anything connects.
        if kafka == "none":
            continue
        if (unusable := KafkaAccess.of(checked).unusable(kafka == "connects")) and (
            line := ": ".join(unusable)
        ) not in problems:
            problems.append(line)
    return problems


def documented(**values: Any) -> ServiceSettings:
    """The shared settings as documented (their defaults, and `values`), whatever this process's
    environment says: what the generated AsyncAPI and OpenAPI documents describe."""
    return _from_values_only(ServiceSettings)(**values)


@cache
def _from_values_only(settings_class: type[ServiceSettings]) -> type[ServiceSettings]:
    """`settings_class` validating the values it is given, not the process's own environment."""

    class Checked(settings_class):  # type: ignore[valid-type, misc]
        @classmethod
        def settings_customise_sources(
            cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource, *_: Any, **__: Any
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings,)

    return Checked


TOOL_VARIABLES = frozenset(
    {
        "ALERTS_RETENTION_DAYS",
        "DLQ_RETENTION_DAYS",
        "FEO_CACHE_DIR",
        "FEO_DATA_DIR",
        "KAFKA_PORT",
        "POSTGRES_PORT",
        "KAFKA_DASHBOARDS",
    }
)
"""The variables `./dev up` and the operators' tools read (deploy/), no service's setting (README, Settings)."""
_CLOSE = 0.85
"""How close a name must be to a setting's to be taken for it misspelled (difflib's ratio): none
of the usual environment's (HTTP_PROXY, KAFKA_OPTS, HOSTNAME, OTEL_SERVICE_NAME…) is."""


def misspelled(
    environ: Iterable[str], classes: Iterable[type[ServiceSettings]], *, tools: bool = False
) -> list[tuple[str, str]]:
    """The variables of `environ` that no setting of `classes` nor any tool reads, but whose name
    is close to one that is read, each with that name: a setting misspelled (INBOX_RETENTION_DAY),
    ignored and its default in force, said by no check of the values. Names only, never a value.
    `classes`: every service's (one ConfigMap gives each service the others' variables too);
    `tools`: the tools' variables named too (`./dev up`'s), not to a service, which reads none.
    Not the variables Kubernetes gives a pod for each Service of its namespace (`<NAME>_PORT…`,
    `<NAME>_SERVICE_…` beside a `<NAME>_SERVICE_HOST`): a Service named postgresql gives
    POSTGRESQL_PORT, close to POSTGRES_PORT."""
    names = list(environ)
    read = {f.upper() for cls in classes for f in cls.model_fields} | set(VARIABLES.values())
    known = read | TOOL_VARIABLES
    named = known if tools else read
    services = tuple(n.upper().removesuffix("SERVICE_HOST") for n in names if n.upper().endswith("_SERVICE_HOST"))
    found = []
    for name in sorted(names):
        upper = name.upper()
        if upper in known or any(upper.startswith((f"{s}PORT", f"{s}SERVICE_")) for s in services):
            continue
        if close := difflib.get_close_matches(upper, named, 1, _CLOSE):
            found.append((name, close[0]))
    return found


def ignored(name: str, closest: str) -> str:
    """A variable taken for a setting misspelled (`misspelled`), as a line says it."""
    return f"{name}: not a setting, ignored (did you mean {closest}?)"


_KINDS: dict[Any, str] = {int: "an integer", float: "a number", timedelta: "a duration in seconds or ISO 8601 (PT5M)"}
_BOUNDS = ((at.Ge, "ge", "≥"), (at.Gt, "gt", ">"), (at.Le, "le", "≤"), (at.Lt, "lt", "<"))


def _problem(variable: str, field: str, value: str, info: FieldInfo, error: Any) -> str:
    if error["type"] == "value_error":
        rule = str(error["ctx"]["error"])
    elif get_origin(info.annotation) is Literal:
        rule = f"must be one of {', '.join(get_args(info.annotation))}"
    elif error["type"] in ("string_too_short", "string_too_long"):  # "must be valid" said not which
        shortest = next((m.min_length for m in info.metadata if isinstance(m, at.MinLen)), 0)
        longest = next((m.max_length for m in info.metadata if isinstance(m, at.MaxLen)), None)
        rule = f"must be {shortest} to {longest} characters" if longest else f"must be at least {shortest} characters"
    else:
        bounds = [
            f"{sign} {_number(getattr(m, attr))}"
            for m in info.metadata
            for kind, attr, sign in _BOUNDS
            if isinstance(m, kind)
        ]
        rule = " ".join([f"must be {_KINDS.get(info.annotation, 'valid')}", " and ".join(bounds)]).strip()
    if field in SECRET:
        return f"{variable}: {rule}"
    masked = redact(value)  # whole: cut first, a URL's userinfo lost its `@` and was not masked
    shown = masked if len(masked) <= 40 else f"{masked[:40]}…"
    return f"{variable}: {rule} (got {shown!r})"


def _number(bound: Any) -> str:
    """A bound as a rule says it: a duration in seconds, every digit (3.1536e+08 said nothing)."""
    if isinstance(bound, timedelta):
        seconds = bound.total_seconds()
        return f"{seconds:.0f}" if seconds.is_integer() else f"{seconds:g}"
    return f"{bound:g}"
