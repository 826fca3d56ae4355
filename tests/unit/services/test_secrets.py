"""Passwords never printed: URLs and DSNs as they appear in settings, logs and messages."""

import pytest

from services.common.runtime.secrets import redact


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql://feo:s3cret@db.example:5432/feo", "postgresql://feo:***@db.example:5432/feo"),
        ("postgres://feo:s3cret@db/feo?sslmode=require", "postgres://feo:***@db/feo?sslmode=require"),
        # percent-encoded special characters, and raw ones that a hurried operator pastes
        ("postgresql://feo:p%40ss%3Aw%2Frd@db/feo", "postgresql://feo:***@db/feo"),
        ("postgresql://feo:p@ss:w/rd?x#y@db:5432/feo", "postgresql://feo:***@db:5432/feo"),
        ("postgresql://:s3cret@db/feo", "postgresql://:***@db/feo"),
        ("postgresql://feo:s3cret@h1:5432,h2:5432/feo", "postgresql://feo:***@h1:5432,h2:5432/feo"),
        ("https://collector:t0ken@otel.example/v1/traces", "https://collector:***@otel.example/v1/traces"),
    ],
)
def test_the_password_of_a_url_is_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "postgresql://127.0.0.1:5432/postgres",
        "postgresql:///feo?host=/var/run/postgresql",
        "postgresql://postgres@[::1]/feo?sslmode=require",
        "postgresql://feo@/feo?host=/tmp",
        "127.0.0.1:9092,127.0.0.1:9093",
        "https://example.org/search",
        "no url here, x=1",
    ],
)
def test_text_without_a_password_is_unchanged(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # what urllib3 logs when an OTLP collector is away (OTEL_ENDPOINT=https://…/v1/traces?api-key=…)
        (
            "Max retries exceeded with url: /v1/traces?api-key=S3CRET (Caused by NewConnectionError)",
            "Max retries exceeded with url: /v1/traces?api-key=*** (Caused by NewConnectionError)",
        ),
        ("https://otel.example/v1/traces?token=S3CRET&x#f", "https://otel.example/v1/traces?token=***&***#***"),
        ("https://example.org/search?q=a:b@c", "https://example.org/search?q=***"),
        ("url: /v1/traces?api-key=S3CRET) next", "url: /v1/traces?api-key=***) next"),  # the text around kept
        ("https://idp.example/cb#access_token=S3CRET&state=1", "https://idp.example/cb#access_token=***&state=***"),
        ("wss://h.example/s?t=S3CRET", "wss://h.example/s?t=***"),
        # a token as the user name of an http(s) URL (JWKS_URL), no password after it
        ("https://S3CRET@idp.example/jwks", "https://***@idp.example/jwks"),
    ],
)
def test_an_http_url_s_query_values_and_lone_user_name_are_masked(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("host=db port=5432 user=feo password=s3cret dbname=feo", "host=db port=5432 user=feo password=*** dbname=feo"),
        ("host=db password='s3 cr\\'et' dbname=feo", "host=db password='***' dbname=feo"),
        (
            "postgresql://db/feo?user=feo&password=s3cret&sslmode=require",
            "postgresql://db/feo?user=feo&password=***&sslmode=require",
        ),
        ("PASSWORD = s3cret", "PASSWORD = ***"),
        # any key ending so, and a client's settings printed as a dict or JSON (audit helper-173 #1)
        ("KAFKA_PASSWORD=s3cret PGPASSWORD=s3cret", "KAFKA_PASSWORD=*** PGPASSWORD=***"),
        ("sasl_plain_password=s3cret, x=1", "sasl_plain_password=***, x=1"),
        ("{'sasl_plain_password': 's3cret', 'acks': 'all'}", "{'sasl_plain_password': '***', 'acks': 'all'}"),
        ('{"password": "s3cret"}', '{"password": "***"}'),
        ("KAFKA_PASSWORD_FILE=/run/secrets/kafka", "KAFKA_PASSWORD_FILE=/run/secrets/kafka"),  # a path: kept
        ("KAFKA_PASSWORD: required with SASL_SSL", "KAFKA_PASSWORD: required with SASL_SSL"),  # a rule: kept
    ],
)
def test_password_pairs_are_masked(text, expected):
    assert redact(text) == expected


def test_every_url_of_a_message_is_masked():
    text = "could not reach 'postgresql://a:one@db1/x' nor (postgresql://b:two@db2/y), see https://docs.example/pg"
    masked = redact(text)
    assert "one" not in masked and "two" not in masked
    assert masked == (
        "could not reach 'postgresql://a:***@db1/x' nor (postgresql://b:***@db2/y), see https://docs.example/pg"
    )


def test_service_logs_never_show_a_password(logging_restored, capsys):
    import structlog

    from services.common.runtime.logs import configure_logging

    configure_logging("test", "json", "INFO")  # here: pytest swaps sys.stderr between phases
    log = structlog.get_logger("test")
    try:
        raise ConnectionError("cannot reach postgresql://feo:s3cret@db/feo")
    except ConnectionError:
        log.exception("db.failed", url="postgresql://feo:hunter2@db/feo", attempt=1)
    log.info("nested", targets={"db": "postgresql://feo:swordfish@db/feo"}, urls=["https://u:tr0ub4dor@h/"])
    err = capsys.readouterr().err
    assert "s3cret" not in err and "hunter2" not in err
    assert "swordfish" not in err and "tr0ub4dor" not in err, "in a dict or a list too"
    assert "postgresql://feo:***@db/feo" in err and '"attempt": 1' in err


def test_postgresql_s_detail_line_which_quotes_a_row_is_masked():
    """asyncpg prints an error's DETAIL line: a key or a failing row's values, a teacher's id
    among them; the message and the lines after it are kept (audit helper-173 #2)."""
    import asyncpg

    error = asyncpg.UniqueViolationError('duplicate key value violates unique constraint "inscriptions_pkey"')
    error.detail = "Key (teacher_id, uai)=(T-0042, 0350001A) already exists."
    error.hint = "a hint"
    masked = redact(f"refused: {error}")
    assert "T-0042" not in masked
    assert masked == (
        'refused: duplicate key value violates unique constraint "inscriptions_pkey"\nDETAIL:  ***\nHINT:  a hint'
    )


def test_a_detail_over_several_lines_or_indented_in_a_traceback_is_masked_whole():
    """A value holding a line break went on past the DETAIL line; an exception group's traceback
    indents the line behind `| ` (review helper-178 #5). What follows a blank line is kept."""
    several = 'new row violates check constraint "c"\nDETAIL:  Failing row contains (T-0042, a\nsecond line).'
    assert redact(several) == 'new row violates check constraint "c"\nDETAIL:  ***'
    grouped = (
        "  | asyncpg.exceptions.UniqueViolationError: duplicate\n  | DETAIL:  Key (t)=(T-0042) exists.\n  | \nnext"
    )
    assert redact(grouped) == "  | asyncpg.exceptions.UniqueViolationError: duplicate\n  | DETAIL:  ***\n  | \nnext"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "invalid input for query argument $1: 'T-0042' ('str' object cannot be interpreted as an integer)",
            "invalid input for query argument $1: *** ('str' object cannot be interpreted as an integer)",
        ),
        (  # a value holding parentheses, in an executemany
            "invalid input for query argument $2 in element #3 of executemany() sequence: 'Jean (Dupont)' "
            "(expected int, got str)",
            "invalid input for query argument $2 in element #3 of executemany() sequence: *** (expected int, got str)",
        ),
        (  # a batch's column, cut at 40 characters; a reason over two lines: the rest of the line
            "DataError: invalid input for query argument $1: ['T-0042', 'T-0043', 'T-0044', 'T-004... (a\nb)\nnext",
            "DataError: invalid input for query argument $1: ***\nb)\nnext",
        ),
    ],
)
def test_the_value_asyncpg_could_not_send_is_masked_its_reason_kept(text, expected):
    """asyncpg quotes the value it could not send: a teacher's id, the first ones of a batch's
    column; a batch failing so is logged with its traceback (audit helper-181 S5)."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # psql or pg_restore where the server's lc_messages is French: the row after DÉTAIL.
        (
            "ERREUR:  la valeur d'une clé dupliquée rompt la contrainte unique\n"
            "DÉTAIL : La clé « (teacher_id, uai)=(T-0042, 0350042F) » existe déjà.\nASTUCE : une astuce",
            "ERREUR:  la valeur d'une clé dupliquée rompt la contrainte unique\nDÉTAIL : ***\nASTUCE : une astuce",
        ),
        # A pydantic error's text quotes the value it refused.
        (
            "teacher_id\n  Input should be a valid integer [type=int_parsing, input_value='T-0042', input_type=str]",
            "teacher_id\n  Input should be a valid integer [type=int_parsing, input_value=***, input_type=str]",
        ),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer ***"),
        ("AUTHORIZATION: BEARER abc.def-ghi", "AUTHORIZATION: BEARER ***"),  # (review s64 L3)
        ('WWW-Authenticate: Bearer realm="feo"', 'WWW-Authenticate: Bearer realm="feo"'),  # no token there
        ("input_value='T-0042 cut here", "input_value=***"),  # no terminator: to the line's end (L1)
        ("jeton eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl refusé", "jeton *** refusé"),
        ("client_secret=s3cr3t&grant_type=client_credentials", "client_secret=***&grant_type=client_credentials"),
        ('{"access_token": "t0k3n", "expires_in": 300}', '{"access_token": "***", "expires_in": 300}'),
    ],
)
def test_rows_tokens_secrets_and_pydantic_s_quoted_values_are_masked(text, expected):
    """What redact left in clear (audit s64 privacy F2, F3): a French server's DETAIL (a restore's
    error line printed it), the value a pydantic error quotes, bearer tokens, JWTs, secret and
    token pairs."""
    assert redact(text) == expected


def test_a_failed_restore_says_its_error_line_never_a_row_in_either_language():
    """The restore's error was psql's last line holding "ERROR:", else its last line: a French
    server's `DÉTAIL :` line, which quotes the row (audit s64 privacy F2)."""
    from deploy.sauvegarde import SauvegardeError, _run

    lines = [
        "psql:x.sql:1: ERREUR:  la valeur d'une clé dupliquée rompt la contrainte unique « inscriptions_pkey »",
        "DÉTAIL : La clé « (teacher_id, uai)=(T-0042, 0350042F) » existe déjà.",
        "CONTEXTE : COPY inscriptions, ligne 2",
    ]
    script = "printf '%s\\n' " + " ".join(f'"{line}"' for line in lines) + " >&2; exit 3"
    with pytest.raises(SauvegardeError) as failed:
        _run(["sh", "-c", script], {}, "restore")
    assert str(failed.value) == f"restore failed: {lines[0]}"
