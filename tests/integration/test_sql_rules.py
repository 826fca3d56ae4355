"""Where SQL counts for speed, it says what the rules say: `queries.EVALUATED` and
`queries.VERDICT` against `rules.is_evaluated` and `rules.verdict`, on every combination, in
the real database."""

import itertools
import json
from datetime import date

from contracts import ALERT_KINDS
from services.common.storage.db import create_pool, migrate
from services.ressources import queries
from services.ressources.app import SPEC
from services.ressources.rules import is_evaluated, verdict


async def test_the_sql_of_an_evaluated_pair_is_the_rule(database_url):
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        cases = list(itertools.product([None, date(2026, 12, 31)], [True, False, None], [True, False]))
        got = {}
        for case in cases:
            end, ouvert, publiee = case
            got[case] = await pool.fetchval(
                f"""SELECT {queries.EVALUATED} FROM (SELECT $1::date AS "end") a
                    LEFT JOIN (SELECT $2::boolean AS ouvert) e ON $2::boolean IS NOT NULL
                    CROSS JOIN (SELECT $3::boolean AS publiee) r""",
                end,
                ouvert,
                publiee,
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
            kinds = {k for k, h in zip(ALERT_KINDS, holds, strict=True) if h}
            sql = await pool.fetchval(f"SELECT {queries.VERDICT} FROM (SELECT {columns}) p", *holds)
            assert sql == verdict(kinds), kinds
    finally:
        await pool.close()


FILTER_VALUES = {
    "code_academie": ["14", "17"],
    "code_departement": ["035", "044"],
    "responsable_type": ["departement", "region"],
    "responsable_code": ["035", "53"],
    "kind": ["equipement-incompatible", "formation-insuffisante"],
}


async def test_the_alert_filter_selects_in_sql_what_it_matches_in_python(database_url):
    """AlertFilter.where (the alerts list), .conditions (the journal replay) and .matches (the
    live stream) are one definition: on every filter, over alerts of every combination."""
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        alerts = []
        for n, (aca, dep, rtype, rcode, kind) in enumerate(itertools.product(*FILTER_VALUES.values())):
            alerts.append(
                {
                    "alert_id": f"a{n}",
                    "code_academie": aca,
                    "code_departement": dep,
                    "kind": kind,
                    "responsable": {"type": rtype, "code": rcode} if n % 5 else None,
                }
            )
        await pool.executemany(
            "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte) "
            "VALUES ($1, '0350042F', 'r', $2, true, 1, now(), $3::jsonb)",
            [(a["alert_id"], a["kind"], json.dumps(a)) for a in alerts],
        )
        choices = [[None, *values] for values in FILTER_VALUES.values()]
        for chosen in itertools.product(*choices):
            f = queries.AlertFilter(*chosen)
            where, args = f.where()
            in_sql = {r["alert_id"] for r in await pool.fetch(f"SELECT alert_id FROM alertes{where}", *args)}
            conditions, values = f.conditions("alerte", 1)
            in_journal_form = {
                r["alert_id"]
                for r in await pool.fetch(
                    f"SELECT alert_id FROM alertes WHERE {' AND '.join(['true', *conditions])}", *values
                )
            }
            in_python = {a["alert_id"] for a in alerts if f.matches(a)}
            assert in_sql == in_journal_form == in_python, chosen
    finally:
        await pool.close()
