"""check_environment: one line per bad setting, naming the variable as typed and the rule,
never the value of a setting that may hold a secret; the services read the same rules."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
import structlog

from services.common.runtime.settings import ServiceSettings, check_environment
from services.ressources.settings import RessourcesSettings

BOTH = (ServiceSettings, RessourcesSettings)
ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        ({"BATCH_MAX_RECORDS": "abc"}, "BATCH_MAX_RECORDS: must be an integer ≥ 1 (got 'abc')"),
        ({"BATCH_MAX_RECORDS": "0"}, "BATCH_MAX_RECORDS: must be an integer ≥ 1 (got '0')"),
        ({"OUTBOX_POLL_MS": "2.5"}, "OUTBOX_POLL_MS: must be an integer ≥ 10 (got '2.5')"),
        ({"HTTP_PORT": "70000"}, "HTTP_PORT: must be an integer ≥ 1 and ≤ 65535 (got '70000')"),
        ({"STARTUP_TIMEOUT_SECONDS": "inf"}, "STARTUP_TIMEOUT_SECONDS: must be a number > 0 (got 'inf')"),
        ({"UNHEALTHY_EXIT_SECONDS": "-1"}, "UNHEALTHY_EXIT_SECONDS: must be a number ≥ 0 (got '-1')"),
        (
            {"MAX_CLOCK_SKEW": "-5"},
            "MAX_CLOCK_SKEW: must be a duration in seconds or ISO 8601 (PT5M) ≥ 0 and ≤ 315360000 (got '-5')",
        ),
        (
            {"MAX_CLOCK_SKEW": "soon"},
            "MAX_CLOCK_SKEW: must be a duration in seconds or ISO 8601 (PT5M) ≥ 0 and ≤ 315360000 (got 'soon')",
        ),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT: must be one of auto, console, json (got 'xml')"),
        ({"OTEL_EXPORTER": "jaeger"}, "OTEL_EXPORTER: must be one of none, console, otlp (got 'jaeger')"),
        ({"log_level": "loud"}, "log_level: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got 'loud')"),
        (
            {"LIBRARY_LOG_LEVEL": "x" * 50},
            f"LIBRARY_LOG_LEVEL: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got '{'x' * 40}…')",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "kafka:ninety"},
            "KAFKA_BOOTSTRAP_SERVERS: must be host:port pairs separated by commas, like 127.0.0.1:9092 "
            "(got 'kafka:ninety')",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "a:9092,"},
            "KAFKA_BOOTSTRAP_SERVERS: must be host:port pairs separated by commas, like 127.0.0.1:9092 (got 'a:9092,')",
        ),
        (
            {"DB_SCHEMA": "Formation-1"},
            "DB_SCHEMA: must be a PostgreSQL name in lower case: letters, digits and _, not starting with a digit, "
            "63 at most (got 'Formation-1')",
        ),
        (
            {"TOPIC_PREFIX": "t 1."},
            "TOPIC_PREFIX: may hold only letters, digits, '.', '_' and '-', 200 at most (got 't 1.')",
        ),
        (  # beyond it, the clock plus the skew overflowed and every record's batch failed for ever
            {"MAX_CLOCK_SKEW": "P9000Y"},
            "MAX_CLOCK_SKEW: must be a duration in seconds or ISO 8601 (PT5M) ≥ 0 and ≤ 315360000 (got 'P9000Y')",
        ),
        ({"MIN_COMPATIBLE_SHARE": "1.5"}, "MIN_COMPATIBLE_SHARE: must be a number ≥ 0 and ≤ 1 (got '1.5')"),
        # "must be valid": an empty value (a template's slip) was refused without the rule (audit s72 #4)
        ({"CONSUMER_INSTANCE_ID": ""}, "CONSUMER_INSTANCE_ID: must be 1 to 200 characters (got '')"),
        (
            {"CONSUMER_INSTANCE_ID": "p" * 201},
            f"CONSUMER_INSTANCE_ID: must be 1 to 200 characters (got '{'p' * 40}…')",
        ),
        ({"SSE_MAX_SECONDS": "nan"}, "SSE_MAX_SECONDS: must be a number > 0 (got 'nan')"),
    ],
)
def test_each_kind_of_bad_value_is_one_line_naming_the_variable_and_the_rule(environ, line):
    assert check_environment({"PATH": "/usr/bin", **environ}, BOTH) == [line]


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        (
            {"DATABASE_URL": "mysql://feo:s3cret@db/feo"},
            "DATABASE_URL: must be a PostgreSQL URL, postgresql://user:password@host:port/database",
        ),
        *(
            (
                {"OTEL_ENDPOINT": url},
                "OTEL_ENDPOINT: must be an http:// or https:// URL naming a host (and a port: 1–65535)",
            )
            for url in ("grpc://feo:s3cret@collector:4317", "https://feo:s3cret@collector:99999", "http:///v1/traces")
        ),
        *(
            (
                {"DATABASE_URL": f"postgresql://feo:{password}@db/feo"},
                "DATABASE_URL: its user and password must have / ? and # percent-encoded (%2F %3F %23)",
            )
            for password in ("s3c/ret", "s3c?ret", "s3c#ret", "1234/s3cret", "1234?s3c=ret", "?s3c=ret")
        ),
        (
            {"DATABASE_URL": "postgresql://feo:s3c ret@db/feo"},  # asyncpg reads it; redact would not mask it
            "DATABASE_URL: must hold no space: percent-encode it (%20)",
        ),
        (
            {"DATABASE_URL": "postgresql://feo:s3cret@db:99999/feo"},
            "DATABASE_URL: its port must be a number from 0 to 65535 (else a / ? or # in its password is not "
            "percent-encoded: %2F %3F %23)",
        ),
    ],
)
def test_a_setting_that_may_hold_a_secret_is_named_without_its_value(environ, line):
    assert check_environment(environ) == [line]


def test_a_jwks_url_refused_never_shows_its_credentials_even_long():
    """Cut to 40 characters before it was masked, a URL whose userinfo ends past them lost its
    `@`, and the start of its password or token was printed."""
    from services.passerelle.settings import PasserelleSettings

    for url in (
        "http://svc:S3cr3tP4ssw0rdThatIsQuiteLong@keys.example.org/jwks",
        "http://eyJhbGciOiJIUzI1NiJ9abcdefghijklmnopqrstuv@keys.example.org/jwks",
    ):
        [line] = check_environment({"JWKS_URL": url}, [PasserelleSettings])
        assert line.startswith("JWKS_URL: ") and "S3cr3t" not in line and "eyJhbG" not in line, line


def test_a_value_shown_is_masked_before_it_is_cut():
    long_user = "u" * 26  # its password within the 40 characters shown, its '@' just past them
    [line] = check_environment({"LOG_FORMAT": f"http://{long_user}:s3cr3t@host.example/very/long/path"})
    assert "s3cr3t" not in line and ":***@" in line, line


def test_every_problem_is_said_once_even_when_several_services_share_the_setting():
    environ = {"BATCH_MAX_RECORDS": "x", "LOG_FORMAT": "xml", "SSE_MAX_CLIENTS": "0"}
    assert check_environment(environ, BOTH) == [
        "BATCH_MAX_RECORDS: must be an integer ≥ 1 (got 'x')",
        "LOG_FORMAT: must be one of auto, console, json (got 'xml')",
        "SSE_MAX_CLIENTS: must be an integer ≥ 1 (got '0')",
    ]
    assert check_environment(environ) == check_environment(environ, BOTH)[:2], "ressources' own: its class"


def test_good_values_pass_and_only_the_given_environment_is_read(monkeypatch):
    monkeypatch.setenv("BATCH_MAX_RECORDS", "abc")  # the process's own: not what is checked
    good = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-1:9092, kafka-2:9093,[::1]:9094,kafka-3",
        "DATABASE_URL": "postgres://feo:s3cret@db:5432/feo?sslmode=require",
        "DB_SCHEMA": "formation_2",
        "TOPIC_PREFIX": "t1a2b.",
        "MAX_CLOCK_SKEW": "PT10M",
        "LOG_LEVEL": "debug",
        "OTEL_ENDPOINT": "https://collector:4318/v1/traces",
        "MIN_COMPATIBLE_SHARE": "1",
    }
    assert check_environment(good, BOTH) == []
    assert check_environment({}, BOTH) == []
    for url in (
        "postgresql://feo:s3c%2F%3F%23r@t@db/feo",
        "postgresql:///feo?host=/run/postgresql&user=feo@serveur&sslrootcert=/etc/a@b/ca.crt",
        "postgresql://db",
        "postgresql://feo:s3cret@db-1:5432,db-2:5433/feo?target_session_attrs=read-write",  # asyncpg's several hosts
        "postgresql://feo:s3cret@[::1]:5432/feo",
    ):
        assert check_environment({"DATABASE_URL": url}) == [], url


def test_a_service_reads_the_documented_forms(monkeypatch):
    monkeypatch.setenv("MAX_CLOCK_SKEW", "300")  # seconds, as the README says
    monkeypatch.setenv("LOG_LEVEL", "debug")
    settings = ServiceSettings()
    assert settings.max_clock_skew == timedelta(seconds=300)
    assert settings.log_level == "DEBUG"
    assert ServiceSettings(max_clock_skew="PT1M30S").max_clock_skew == timedelta(seconds=90)


def test_the_clock_skew_is_five_minutes_unless_set(monkeypatch):
    """CONTRACTS.md, Limits: "MAX_CLOCK_SKEW (deployment setting, default 5 minutes)" (audit helper-188 7d)."""
    monkeypatch.delenv("MAX_CLOCK_SKEW", raising=False)
    assert ServiceSettings().max_clock_skew == timedelta(minutes=5)


def test_a_database_url_without_a_user_is_refused_only_where_the_process_s_user_has_no_name(monkeypatch):
    """asyncpg and libpq default to the process's user name: a container run under a user id
    without one (deploy/k8s: 10001) failed at its first connection with a KeyError."""
    import getpass

    no_user = {"DATABASE_URL": "postgresql://db/feo"}
    monkeypatch.delenv("PGUSER", raising=False)
    monkeypatch.setattr(getpass, "getuser", lambda: "dev")
    assert check_environment(no_user) == [], "locally: the process's user name"

    def nameless() -> str:
        raise KeyError("getpwuid(): uid not found: 10001")

    monkeypatch.setattr(getpass, "getuser", nameless)
    assert check_environment(no_user) == [
        "DATABASE_URL: must name its user (postgresql://user@…): this process's user has no name to default to"
    ]
    for named in ("postgresql://feo@db/feo", "postgresql://db/feo?user=feo"):
        assert check_environment({"DATABASE_URL": named}) == [], named
    monkeypatch.setenv("PGUSER", "feo")  # PostgreSQL's clients read it too
    assert check_environment(no_user) == []


def test_a_misspelled_setting_is_named_with_the_setting_it_is_close_to_never_its_value():
    """Not a bad value: ignored without a word, its default in force (audit s72 #3: personal
    data kept 30 days under INBOX_RETENTION_DAY=7)."""
    from services.common.runtime.app import warn_misspelled
    from services.common.runtime.settings import misspelled
    from services.specs import specs

    classes = {spec.settings for spec in specs()}
    environ = {
        "INBOX_RETENTION_DAY": "7",
        "min_compatible_shares": "0.8",  # read whatever its case, as the settings are
        "SSE_MAX_CLIENTS": "5",  # ressources' own, in every service's environment (one ConfigMap)
        "ALERTS_RETENTION_DAYS": "0",  # ./dev up's
        "KAFKA_USERNAME": "formation",  # the Kafka access's
        **dict.fromkeys(["HTTP_PROXY", "KAFKA_OPTS", "HOSTNAME", "OTEL_SERVICE_NAME", "PGPORT", "POD_NAMESPACE"], "x"),
        # Kubernetes' for a Service named postgres-rw, one named kafka-0 (review s72 #2)
        **dict.fromkeys(["POSTGRES_RW_SERVICE_HOST", "POSTGRES_RW_PORT", "POSTGRES_RW_SERVICE_PORT"], "x"),
        **dict.fromkeys(["KAFKA_0_SERVICE_HOST", "KAFKA_0_PORT", "KAFKA_0_PORT_9092_TCP_PORT"], "x"),
        "POSTGRESQL_PORT": "5432",  # no Service named postgresql: ./dev up's, misspelled
    }
    assert misspelled(environ, classes) == [
        ("INBOX_RETENTION_DAY", "INBOX_RETENTION_DAYS"),
        ("min_compatible_shares", "MIN_COMPATIBLE_SHARE"),
    ]
    assert misspelled(environ, classes, tools=True) == [  # ./dev up's check: the tools' variables named too
        ("INBOX_RETENTION_DAY", "INBOX_RETENTION_DAYS"),
        ("POSTGRESQL_PORT", "POSTGRES_PORT"),
        ("min_compatible_shares", "MIN_COMPATIBLE_SHARE"),
    ]
    with structlog.testing.capture_logs() as said:
        warn_misspelled({"DATABSE_URL": "postgresql://u:secret@h/db"})
    assert said == [
        {
            "event": "settings.ignored",
            "log_level": "warning",
            "variable": "DATABSE_URL",
            "closest": "DATABASE_URL",
            "hint": "not a setting: its default in force",
        }
    ]


def test_the_readme_lists_every_variable_read_and_no_other():
    """What `misspelled` takes for read is what the README's tables list: a setting added without
    its row, or a row left after its setting, fails here."""
    from services.common.messaging.connection import VARIABLES
    from services.common.runtime.settings import TOOL_VARIABLES
    from services.specs import specs

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (`[A-Z][A-Z0-9_]+`(?:(?:, | or )`[A-Z][A-Z0-9_]+`)*) \|", readme, re.MULTILINE)
    listed = {name for row in rows for name in re.findall(r"[A-Z][A-Z0-9_]+", row)}
    read = {f.upper() for spec in specs() for f in spec.settings.model_fields} | set(VARIABLES.values())
    assert listed == read | TOOL_VARIABLES
    tools = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "deploy").rglob("*.py"))
    assert {name for name in TOOL_VARIABLES if f'"{name}"' not in tools} == set(), "read by no tool"
