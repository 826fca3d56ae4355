"""What the real driver says of a value it cannot send, masked as the logs mask it: asyncpg
quotes the value (a teacher's id, the first ones of a batch's column) in its DataError (a
PostgresError of SQLSTATE 22000, raised before anything is sent: a batch meeting it is isolated
and the record dead-lettered, named by its type alone; a traceback elsewhere is masked; audit
helper-181 S5)."""

import traceback

import asyncpg
import pytest

from services.common.runtime.secrets import redact

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("SELECT $1::int", "T-secret-0042"),
        ("SELECT * FROM unnest($1::int[])", ["T-secret-0042", "T-secret-0043"]),
    ],
)
async def test_a_value_asyncpg_cannot_send_leaves_no_trace_in_a_logged_traceback(database_url, sql, value):
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.DataError) as refused:
            await conn.fetch(sql, value)
    finally:
        await conn.close()
    text = "".join(traceback.format_exception(refused.value))
    assert "T-secret-0042" in text, "the driver quotes it"
    masked = redact(text)
    assert "T-secret" not in masked
    assert "invalid input for query argument $1: *** (" in masked, "the reason kept"
