"""Where SQL counts for speed, it says what the rules say: `queries.EVALUATED` and
`queries.VERDICT` against `rules.is_evaluated` and `rules.verdict`, on every combination, in
the real database."""

import itertools
from datetime import date

from contracts import ALERT_KINDS
from services.common.db import create_pool, migrate
from services.ressources import queries
from services.ressources.app import SPEC
from services.ressources.rules import is_evaluated, verdict


async def test_the_sql_of_an_evaluated_pair_is_the_rule(database_url):
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        cases = list(itertools.product([None, date(2026, 12, 31)], [True, False, None], [True, False]))
        got = {}
        for n, case in enumerate(cases):
            end, ouvert, publiee = case
            got[case] = await pool.fetchval(
                f"""SELECT {queries.EVALUATED} FROM (SELECT $1::date AS "end") a
                    LEFT JOIN (SELECT $2::boolean AS ouvert) e ON $2::boolean IS NOT NULL
                    CROSS JOIN (SELECT $3::boolean AS publiee) r""",
                end, ouvert, publiee,
            )
        assert {k: bool(v) for k, v in got.items()} == {case: is_evaluated(*case) for case in cases}
    finally:
        await pool.close()


async def test_the_sql_verdict_is_the_rule_for_every_set_of_open_kinds(database_url):
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        columns = ", ".join(f'${i + 1}::boolean AS "{k}"' for i, k in enumerate(ALERT_KINDS))
        for holds in itertools.product([True, False, None], repeat=len(ALERT_KINDS)):
            kinds = {k for k, h in zip(ALERT_KINDS, holds) if h}
            sql = await pool.fetchval(f"SELECT {queries.VERDICT} FROM (SELECT {columns}) p", *holds)
            assert sql == verdict(kinds), kinds
    finally:
        await pool.close()
