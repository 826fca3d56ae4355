"""The dashboard page in a real browser (Debian's Chromium, Playwright) against ressources served
in this process, its alerts and their live events written straight into its tables (as its
re-evaluations write them, a thousand at a time): what the page shows of many alerts, of a
long burst of events, of instants and of long identifiers. The page against the whole platform
fed by partners is tests/e2e/test_tableau_navigateur.py."""

import asyncio
import contextlib
import json
import re
import time
from datetime import UTC, datetime, timedelta

import pytest
from playwright.async_api import expect

from helpers import eventually, uai
from test_read_api import serve_api

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

expect.set_options(timeout=20_000)


@pytest.fixture
async def api(kafka, settings):
    async with serve_api(settings) as served:
        yield served


def alerte(n: int, code: str, raised_at: datetime, resource_id: str | None = None) -> dict:
    return {
        "alert_id": f"alerte-{n}",
        "uai": code,
        "resource_id": resource_id or f"ark:/67375/r{n}",
        "kind": "equipement-incompatible",
        "reasons": [{"code": "os-version", "detail": "iPadOS 12.5 < 15"}],
        "code_academie": "14",
        "code_departement": "035",
        "responsable": {"type": "departement", "code": "035"},
        "compatible": 0,
        "devices": 10,
        "coverage": None,
        "raised_at": raised_at.isoformat(),
        "resolved_at": None,
    }


async def raise_(pool, alerts: list[dict], announced: bool = True) -> None:
    """`alerts` stored open, each announced on the live stream as ressources does (its journal)."""
    await pool.executemany(
        "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte) "
        "VALUES ($1, $2, $3, $4, true, 1, $5, $6::jsonb)",
        [
            (
                a["alert_id"],
                a["uai"],
                a["resource_id"],
                a["kind"],
                datetime.fromisoformat(a["raised_at"]),
                json.dumps(a),
            )
            for a in alerts
        ],
    )
    if announced:
        await journal(pool, "levee", alerts)


async def resolve(pool, alerts: list[dict]) -> None:
    """`alerts` resolved now, each announced on the live stream."""
    resolved = [{**a, "resolved_at": datetime.now(UTC).isoformat()} for a in alerts]
    await pool.executemany(
        "UPDATE alertes SET ouverte = false, resolved_at = $2 WHERE alert_id = $1",
        [(a["alert_id"], datetime.fromisoformat(a["resolved_at"])) for a in resolved],
    )
    await journal(pool, "resolue", resolved)


async def journal(pool, what: str, alerts: list[dict]) -> None:
    events = [
        {
            "specversion": "1.0",
            "id": f"{what}-{a['alert_id']}",
            "source": "/plateforme/ressources",
            "type": f"fr.education.alertes.alerte-{what}.v1",
            "time": a["resolved_at"] or a["raised_at"],
            "subject": f"{a['uai']}/{a['resource_id']}",
            "data": a,
        }
        for a in alerts
    ]
    await pool.execute(
        "WITH added AS (INSERT INTO alert_journal (event_id, alert_id, event) "
        "SELECT e->>'id', e->'data'->>'alert_id', e FROM jsonb_array_elements($1::jsonb) AS e RETURNING seq) "
        "SELECT pg_notify('alertes', max(seq)::text) FROM added",
        json.dumps(events),
    )


async def opened(browser, base_url: str, answered: list[str] | None = None, **context):
    """The page open, its stream too; `answered`: where the lists it reads are added once answered."""
    page = await browser.new_page(locale="fr-FR", viewport={"width": 1366, "height": 800}, **context)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    if answered is not None:
        page.on("response", lambda r: answered.append(r.url) if "/alertes?" in r.url else None)
    await page.goto(f"{base_url}/tableau")
    await expect(page.locator("#direct")).to_have_attribute("data-etat", "ouvert")
    return page, errors


async def test_a_long_burst_of_events_is_shown_while_it_lasts_and_announced_together(api, browser):
    """Each event put off the list's reading by 300 ms more: a burst of events 100 ms apart (a
    national re-evaluation's chunks) left the list unread for as long as it lasted, "Aucune
    alerte" under "Direct : connecté", and a screen reader read every one (audit helper-182 #1, #4)."""
    client, app = api
    pool = app.state.pipeline.pool
    page, errors = await opened(browser, str(client.base_url))
    await expect(page.locator("#compte")).to_have_text("Aucune alerte pour ces filtres.")
    announced: list[str] = []
    await page.expose_function("announced", lambda text: announced.append(text))
    await page.evaluate(
        "new MutationObserver(() => window.announced(document.getElementById('annonce').textContent))"
        ".observe(document.getElementById('annonce'), {childList: true, characterData: true, subtree: true})"
    )
    shown_during: set[str] = set()

    async def sampling() -> None:  # apart from the raises: its round trips do not stretch the burst
        while True:
            shown_during.add(await page.locator("#compte").inner_text())
            await asyncio.sleep(0.3)

    sampler = asyncio.create_task(sampling())
    started = time.monotonic()
    try:
        for n in range(50):  # 50 raises 100 ms apart (more on a busy machine): 5 s at least
            await raise_(pool, [alerte(n, uai(f"03502{n:02d}"), datetime.now(UTC))])
            await asyncio.sleep(0.1)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    assert shown_during - {"Aucune alerte pour ces filtres.", "1 alerte"}, f"read while it lasted: {shown_during}"
    await expect(page.locator("#compte")).to_have_text("50 alertes")
    # Until the page has shown the last raise (a busy browser may lag the stream by seconds):
    # two lines a reading at most (a burst's first, then the others together), a reading every
    # 1.5 s at least meanwhile. Far fewer than one a raise.
    lasted, lines = time.monotonic() - started, len(announced)
    assert lines <= 2 * (lasted / 1.5 + 2), f"announced together, not one by one: {lines} in {lasted:.1f} s"
    assert lines < 50, f"announced together, not one by one: {lines}"
    assert any(a.startswith("Autres changements dans cette vue : ") for a in announced), announced
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_instants_are_in_paris_time_whatever_the_viewer_s_zone_and_counts_are_in_french(api, browser):
    """A kiosk on UTC read an alert raised at 00:30 in Paris as raised the day before; "1234
    alertes" had no thousands' space (audit helper-182 #7, #15)."""
    client, app = api
    pool = app.state.pipeline.pool
    code = uai("0350300")
    raised = datetime(2026, 10, 25, 23, 30, tzinfo=UTC)  # 26 October, 00:30 in Paris (winter time since 03:00)
    await raise_(pool, [alerte(0, code, raised)], announced=False)
    await pool.execute(
        "INSERT INTO alertes (alert_id, uai, resource_id, kind, ouverte, cycle, raised_at, alerte) "
        "SELECT 'masse-' || n, a.uai, a.resource_id || '-' || n, a.kind, true, 1, "
        "a.raised_at - n * interval '1 minute', "
        "jsonb_set(jsonb_set(a.alerte, '{alert_id}', to_jsonb('masse-' || n)), '{resource_id}', "
        "to_jsonb(a.resource_id || '-' || n)) FROM alertes a, generate_series(1, 1233) n WHERE a.alert_id = 'alerte-0'"
    )
    for zone in ("UTC", "America/Cayenne"):
        page, errors = await opened(browser, str(client.base_url), timezone_id=zone)
        first = page.locator("#alertes tbody tr").first
        await expect(first.locator("time")).to_have_text("26/10/2026 00:30")
        assert re.fullmatch(r"1\u202f234 alertes", await page.locator("#compte").inner_text()), zone
        assert re.fullmatch(r"Page 1 sur 62", await page.locator("#page-position").inner_text()), zone
        assert "heure de Paris" in await page.locator("#alertes thead").inner_text()
        assert errors == [], f"JavaScript errors on the page: {errors}"
        await page.close()


async def test_identifiers_and_names_as_long_as_the_contract_allows_stay_within_the_screen(api, browser):
    """A 256-character resource id without a space stretched the list 4,419 px wide on a 1,366 px
    screen, the alert's kind and reasons off it (audit helper-182 #5). And the document's title
    is each view's."""
    client, app = api
    pool = app.state.pipeline.pool
    code = uai("0350301")
    await pool.execute(
        "INSERT INTO etablissements (uai, type, statut, code_commune, code_departement, code_academie, code_region, "
        "ouvert, nom, event_time) VALUES ($1, 'college', 'public', '35238', '035', '14', '53', true, $2, now())",
        code,
        "Collège " + "Chateaubriand-" * 17,
    )
    await raise_(pool, [alerte(0, code, datetime.now(UTC), resource_id="ark:/67375/" + "a" * 245)], announced=False)
    lot = {"lot_id": "L" * 256, "kind": "tablette", "quantity": 3, "os": None, "browsers": []}
    await pool.execute(
        "INSERT INTO entrees (uai, profil) VALUES ($1, $2)", code, json.dumps({"uai": code, "lots": [lot]})
    )
    page, errors = await opened(browser, str(client.base_url))
    await expect(page.locator("#compte")).to_have_text("1 alerte")
    width = "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    scrolled, shown = await page.evaluate(width)
    assert scrolled <= shown, f"the list {scrolled} px wide on a {shown} px screen"
    # Only ids and names wrap anywhere: every cell did, and "ouverte" broke in two beside them.
    lines = (
        "(() => { const r = document.createRange(); r.selectNodeContents(document.querySelector("
        "'#alertes tbody td:last-child')); return r.getClientRects().length; })()"
    )
    assert await page.evaluate(lines) == 1, "the state on one line"
    assert await page.title() == "Alertes — Tableau de bord des alertes — former, équiper, outiller"
    await page.goto(f"{client.base_url}/tableau#/etablissement/{code}")
    await expect(page.locator("#titre-etablissement")).to_contain_text(code)
    # Each view's title its own, for a tab and a screen reader (audit helper-182 #13).
    await expect(page).to_have_title(
        f"Collège {'Chateaubriand-' * 17} ({code}) — Tableau de bord des alertes — former, équiper, outiller"
    )
    scrolled, shown = await page.evaluate(width)
    assert scrolled <= shown, f"the établissement {scrolled} px wide on a {shown} px screen"
    await page.goto(f"{client.base_url}/tableau#/etablissement/{uai('0350399')}")  # unknown: not the former's
    await expect(page.locator("#erreur")).to_contain_text("Lecture impossible")
    await expect(page).to_have_title("Tableau de bord des alertes — former, équiper, outiller")
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_a_page_after_the_first_keeps_its_alerts_when_one_on_an_earlier_page_resolves(api, browser):
    """Pages were read by their offset: an alert of page 1 resolved live, the first row of page 2
    moved up to page 1 and an open alert left the page being read, unseen (audit helper-182 #3).
    Page 2 reached by "Page suivante" (from where page 1 ended as it was shown, though an alert
    of page 1 resolved since without its event), then from a bookmark: read from there."""
    client, app = api
    pool = app.state.pipeline.pool
    now = datetime.now(UTC)
    alerts = [alerte(n, uai(f"03504{n:02d}"), now - timedelta(minutes=n)) for n in range(45)]  # 0: the newest
    await raise_(pool, alerts, announced=False)
    answered: list[str] = []
    page, errors = await opened(browser, str(client.base_url), answered)
    rows = page.locator("#alertes tbody tr")
    await expect(page.locator("#compte")).to_have_text("45 alertes")
    # The view's reading and the one its stream's opening asks: both answered, page 1 as shown.
    await eventually(lambda: asyncio.sleep(0, len(answered) >= 2), what="page 1 read twice")
    await pool.execute("UPDATE alertes SET ouverte = false, resolved_at = now() WHERE alert_id = 'alerte-5'")
    await page.get_by_role("button", name="Page suivante").click()
    await expect(page.locator("#compte")).to_have_text("44 alertes")
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 3")
    second = [a["alert_id"] for a in alerts[20:40]]
    await expect(rows).to_have_count(20)
    assert [await r.get_attribute("data-alert-id") for r in await rows.all()] == second, "page 1 as it was shown"

    await resolve(pool, alerts[:1])  # on page 1
    await expect(page.locator("#compte")).to_have_text("43 alertes")  # read again
    assert [await r.get_attribute("data-alert-id") for r in await rows.all()] == second

    await page.goto(f"{client.base_url}/tableau#/alertes?state=open&page=2")  # a bookmark
    await page.reload()
    await expect(page.locator("#compte")).to_have_text("43 alertes")
    second = [a["alert_id"] for a in [*alerts[1:5], *alerts[6:]][20:40]]
    await expect(rows).to_have_count(20)
    assert [await r.get_attribute("data-alert-id") for r in await rows.all()] == second
    await expect(page.locator("#direct")).to_have_attribute("data-etat", "ouvert")
    await resolve(pool, alerts[1:3])
    await expect(page.locator("#compte")).to_have_text("41 alertes")
    assert [await r.get_attribute("data-alert-id") for r in await rows.all()] == second
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 3")
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_the_focus_stays_on_the_pages_when_the_page_asked_for_is_gone(api, browser):
    """A page shown before its list's last alerts were resolved (without their events) still
    offers "Page suivante": the page asked for has no alert, the last one is shown instead,
    and the focus fell to the document's start (review helper-186 H)."""
    client, app = api
    pool = app.state.pipeline.pool
    now = datetime.now(UTC)
    alerts = [alerte(n, uai(f"03506{n:02d}"), now - timedelta(minutes=n)) for n in range(45)]
    await raise_(pool, alerts, announced=False)
    page, errors = await opened(browser, str(client.base_url))
    await expect(page.locator("#compte")).to_have_text("45 alertes")
    await page.get_by_role("button", name="Page suivante").click()
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 3")
    await pool.execute(
        "UPDATE alertes SET ouverte = false, resolved_at = now() WHERE alert_id = ANY($1::text[])",
        [a["alert_id"] for a in alerts[40:]],  # page 3's
    )
    await page.get_by_role("button", name="Page suivante").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 2")
    await expect(page).to_have_url(re.compile(r"page=2$"))
    await expect(page.get_by_role("button", name="Page suivante")).to_be_disabled()
    await expect(page.get_by_role("button", name="Page précédente")).to_be_focused()
    caption = page.locator("#alertes caption")
    await expect(caption).to_have_text("Alertes ouvertes, la dernière levée d'abord")
    await page.get_by_label("État").select_option("resolved")
    await expect(page.locator("#compte")).to_have_text("5 alertes")
    await expect(caption).to_have_text("Alertes résolues, la dernière résolue d'abord")  # their order
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_the_filters_and_the_pages_with_a_keyboard(api, browser):
    """Arrowing through a closed select read the list and opened a stream at each key; a
    collectivité's code typed without its type ("35") was a région's and found nothing, and one
    typed after its type was read half typed; the focus fell to the document's start when
    "Page suivante" was disabled at the last page; a page number past what the API reads
    answered an error naming `offset`; a filter's choice left for another view brought the list
    back; a list that cannot be read left the former one's pages (audit helper-182 #10, #9,
    #11, #14; review helper-184 #2, #3)."""
    client, app = api
    pool = app.state.pipeline.pool
    now = datetime.now(UTC)
    await raise_(pool, [alerte(n, uai(f"03505{n:02d}"), now - timedelta(minutes=n)) for n in range(25)], False)
    page, errors = await opened(browser, str(client.base_url))
    await expect(page.locator("#compte")).to_have_text("25 alertes")
    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if "/alertes" in r.url else None)

    code, kind = page.get_by_label("Code de la collectivité"), page.get_by_label("Type d'alerte")
    await expect(code).to_be_disabled()
    await page.get_by_label("Type de collectivité").select_option("departement")
    await expect(code).to_be_enabled()
    await expect(code).to_have_attribute("placeholder", "ex. 035")
    await code.press_sequentially("035", delay=300)  # slower than a choice settles
    async with page.expect_response(lambda r: "/alertes?" in r.url and "responsable_code=035" in r.url):
        await code.press("Enter")
    assert "responsable_code=035" in page.url
    typed = [u for u in reads if "responsable_type=" in u]
    assert typed and all("responsable_code=035" in u for u in typed), f"read once typed only: {typed}"
    await page.get_by_label("Type de collectivité").select_option("")
    await expect(code).to_be_disabled()
    await expect(code).to_have_value("")
    await expect(page).to_have_url(re.compile(r"#/alertes\?state=open$"))  # the type's removal read

    for _ in range(3):  # the three presses within a choice's settling, else again (audit helper-189 #2)
        reads.clear()
        await kind.focus()
        started = time.monotonic()
        for _ in range(3):
            await page.keyboard.press("ArrowDown")
        quick = time.monotonic() - started < 0.4  # SETTLE_MS is 500
        await expect(page.locator("#compte")).to_have_text("Aucune alerte pour ces filtres.")  # the third kind's
        assert "kind=" in page.url
        if quick:
            break
        await kind.select_option("")
        await expect(page.locator("#compte")).to_have_text("25 alertes")
    assert quick, "three key presses took 0.4 s or more, three times"
    # The view read and its stream opened once, for the third kind only (the stream's opening
    # reads the view again: what changed before it opened).
    # (Those of the type's removal, read after it settled, may come after the clear.)
    assert len([u for u in reads if "/alertes/flux" in u and "kind=" in u]) == 1, f"one stream: {reads}"
    assert len({u for u in reads if "/alertes?" in u and "kind=" in u}) == 1, f"the list of one kind: {reads}"
    await kind.select_option("")
    await expect(page.locator("#compte")).to_have_text("25 alertes")

    # A choice, then at once another view: in one task of the page, so the choice cannot settle
    # between the two however slow the machine (audit helper-189 #2).
    simuler = await page.get_by_role("link", name="Simuler", exact=True).element_handle()
    await kind.evaluate(
        """(select, link) => {
            select.value = "formation-insuffisante";
            select.dispatchEvent(new Event("change", { bubbles: true }));
            link.click();
        }""",
        simuler,
    )
    await expect(page.locator("#vue-simulation")).to_be_visible()
    await page.wait_for_timeout(1500)  # thrice the time a choice takes to settle
    await expect(page.locator("#vue-simulation")).to_be_visible()
    assert "#/simulation" in page.url, "the choice left behind does not bring the list back"
    await page.go_back()
    await expect(page.locator("#compte")).to_have_text("25 alertes")

    await page.get_by_role("button", name="Page suivante").focus()
    await page.keyboard.press("Enter")
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 2")
    await expect(page.get_by_role("button", name="Page suivante")).to_be_disabled()
    await expect(page.get_by_role("button", name="Page précédente")).to_be_focused()

    await page.evaluate("location.hash = '#/alertes?state=&page=60000'")  # a page past any
    await expect(page).to_have_url(re.compile(r"#/alertes\?state=&page=2$"))  # the last page instead
    await expect(page.locator("#page-position")).to_have_text("Page 2 sur 2")
    await expect(page.locator("#erreur")).to_be_hidden()
    await page.evaluate("location.hash = '#/alertes?responsable_type=region&responsable_code=035'")
    await expect(page.locator("#erreur")).to_contain_text("responsable_code")
    await expect(page.locator("#pages")).to_be_hidden()
    assert errors == [], f"JavaScript errors on the page: {errors}"


async def test_an_academie_s_name_fits_beside_its_bar(api, browser):
    """The académies' names made the charts' labels longer than their room: "Saint-Pierre-et-
    Miquelon (44)" was cut at the chart's edge (review helper-184 #7)."""
    client, _ = api
    page, errors = await opened(browser, str(client.base_url))
    counts = {"evalues": 3, "compatibles": 1, "partiels": 1, "incompatibles": 1, "sous_formes": 1}
    left = await page.evaluate(
        """(counts) => {
            const box = document.createElement("div");
            document.body.append(box);
            const title = document.createElement("h3");
            title.id = "titre-essai";
            document.body.append(title);
            chart(box, "titre-essai", {"44": counts, "14": counts}, academieLabel);
            const label = [...box.querySelectorAll("svg text")].find((t) => t.textContent.startsWith("Saint-"));
            return label.getBBox().x;
        }""",
        counts,
    )
    assert left >= 0, f"the label starts at {left} in its chart"
    assert errors == [], f"JavaScript errors on the page: {errors}"
