"""`referentiel.load` on the real database: what it reads is the row as stored now, though its
models are kept for rows read again unchanged (storage/referentiel.py)."""

import json

import contracts as c
from helpers import college, uai
from services.common.storage import referentiel
from services.common.storage.db import create_pool, migrate
from services.ressources.app import SPEC


def parse(event: dict) -> c.CloudEvent:
    return c.parse_event(json.dumps(event).encode())


async def test_a_row_read_again_is_read_as_it_is_now(database_url):
    code, other = uai("0350100"), uai("0350101")
    pool = await create_pool(database_url, "ressources")
    try:
        await migrate(pool, "ressources", SPEC.package_dir)
        async with pool.acquire() as conn:
            await referentiel.apply(conn, [parse(college(code)), parse(college(other))])
            first = await referentiel.load(conn, [code, other])
            assert first[code].nom == f"Collège {code}" and first[code].ouvert
            assert (await referentiel.load(conn, [code]))[code] == first[code], "unchanged, read alike"

            closed = college(code, minute=1)
            closed["data"].update(nom="Collège fermé", ouvert=False)
            await referentiel.apply(conn, [parse(closed)])
            now = await referentiel.load(conn, [code, other])
            assert (now[code].nom, now[code].ouvert) == ("Collège fermé", False), "the change, not the kept model"
            assert now[other] == first[other]
    finally:
        await pool.close()
