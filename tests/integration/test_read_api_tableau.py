"""What the dashboard page reads beside the rest of the read API (`/territoires`, a resource's
counts per département), and the page itself as ressources serves it: its files, under a
policy that lets it load nothing from elsewhere. Its behaviour in a browser is
tests/e2e/test_tableau_navigateur.py."""

import re

import pytest

from helpers import eventually
from test_read_api import RID, feed, serve_api

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
async def api(kafka, settings):
    async with serve_api(settings) as served:
        yield served


async def test_territories_and_a_resource_per_departement(kafka, settings, api):
    client, app = api
    pool = app.state.pipeline.pool
    await feed(kafka, settings, pool)
    await eventually(lambda: pool.fetchval("SELECT count(*) = 12 FROM alertes"), what="12 alerts")
    await eventually(lambda: pool.fetchval("SELECT NOT EXISTS (SELECT FROM reevaluations)"), what="fan-outs ended")

    territoires = (await client.get("/territoires")).json()
    assert territoires["academies"] == {"14": ["035"], "17": ["044"]}
    assert (territoires["noms"]["14"], territoires["noms"]["17"]) == ("Rennes", "Nantes")
    spread = (await client.get(f"/repartition/{RID}")).json()
    assert spread == {
        "resource_id": RID,
        "par_departement": {
            "035": {"evalues": 4, "compatibles": 2, "partiels": 0, "incompatibles": 2, "sous_formes": 4},
            "044": {"evalues": 1, "compatibles": 0, "partiels": 0, "incompatibles": 1, "sous_formes": 0},
        },
        "reevaluation_en_attente": False,
    }
    per_academie = (await client.get(f"/ressources/{RID}")).json()["par_academie"]
    assert per_academie == {"14": spread["par_departement"]["035"], "17": spread["par_departement"]["044"]}

    missing = await client.get("/repartition/ark:/67375/inconnue")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "resource_id : ark:/67375/inconnue n'est pas dans le catalogue"}


async def test_the_page_and_its_files_are_served_and_name_only_this_service(api):
    client, _ = api
    page = await client.get("/tableau")
    assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert '<html lang="fr">' in page.text and 'role="main"' in page.text
    files = re.findall(r'(?:src|href)="(/tableau/[^"]+)"', page.text)
    assert sorted(files) == ["/tableau/tableau.css", "/tableau/tableau.js"]
    for path in files:
        assert (await client.get(path)).status_code == 200, path
    other = await client.get("/tableau/secret.txt")
    assert other.status_code == 404
    assert other.json() == {"detail": "fichier : le tableau de bord n'a que tableau.css, tableau.js"}


async def test_every_answer_says_nosniff_no_referrer_and_none_may_be_framed_and_the_page_answers_head(api):
    """No answer said `nosniff` nor a Referrer-Policy, /docs and the JSON answers could be framed
    by any site, the page's policy left `base-uri` and `form-action` open, and an uptime
    monitor's HEAD of the page was answered 405 (audit helper-182 #16, #17)."""
    client, _ = api
    for path in ("/", "/docs", "/alertes", "/health", "/tableau", "/tableau/tableau.js", "/absent"):
        answer = await client.get(path, headers={"accept": "text/html", "origin": "https://ailleurs.example"})
        assert "access-control-allow-origin" not in answer.headers, path  # no CORS: README, the read API
        assert answer.headers["x-content-type-options"] == "nosniff", path
        assert answer.headers["referrer-policy"] == "no-referrer", path
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
        assert len(answer.headers.get_list("content-security-policy")) == 1, path
    policy = (await client.get("/tableau")).headers["content-security-policy"]
    assert "base-uri 'none'" in policy and "form-action 'self'" in policy
    for path in ("/tableau", "/tableau/tableau.css"):
        head = await client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert int(head.headers["content-length"]) > 0, path


async def test_the_page_and_its_files_answer_304_to_the_copy_the_browser_holds(api):
    """They are served `no-cache`, so the browser asks again at each load with the ETag it
    holds: the same file is 304 with no body, another ETag the whole file (audit helper-182
    #17: 200 and the whole script each time)."""
    client, _ = api
    for path in ("/tableau", "/tableau/tableau.js", "/tableau/tableau.css"):
        first = await client.get(path)
        etag = first.headers["etag"]
        assert first.status_code == 200 and first.content, path
        for held in (etag, f"W/{etag}", f'"autre", {etag}', "*"):
            again = await client.get(path, headers={"if-none-match": held})
            assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", etag), (path, held)
            assert again.headers["cache-control"] == "no-cache", path
            # The copy held is updated with the 304's headers: its policy kept (review helper-187 #1).
            assert again.headers["content-security-policy"] == first.headers["content-security-policy"], path
        other = await client.get(path, headers={"if-none-match": '"autre"'})
        assert (other.status_code, other.content) == (200, first.content), path


async def test_the_documentation_pages_run_under_a_policy_naming_their_scripts(kafka, settings, browser):
    """/docs, /redoc and the home page said only `frame-ancestors 'none'`: any script a text of
    theirs could carry would have run (security audit s69 F7). Their policy names this service's
    files and their inline scripts by hash; in a browser they still work, nothing refused."""
    from playwright.async_api import expect

    from helpers import serving
    from services.ressources.app import SPEC

    async with serving(SPEC, settings) as (client, _):
        page = await browser.new_page()
        await page.add_init_script(
            "window.refused = []; document.addEventListener('securitypolicyviolation', "
            "e => window.refused.push(e.violatedDirective + ' ' + e.blockedURI))"
        )
        docs = await page.goto(f"{client.base_url}/docs")
        assert docs is not None and "script-src 'self' 'sha256-" in docs.headers["content-security-policy"]
        await expect(page.locator(".swagger-ui .info .title")).to_contain_text("API de lecture", timeout=20_000)
        await expect(page.locator(".opblock-summary-path").first).to_be_visible()
        assert await page.evaluate("window.refused") == []

        redoc = await page.goto(f"{client.base_url}/redoc")
        assert redoc is not None and "object-src 'none'" in redoc.headers["content-security-policy"]
        await expect(page.locator("h1").first).to_contain_text("API de lecture", timeout=20_000)
        await page.locator('input[placeholder="Search..."]').fill("alertes")  # searched in a worker
        await expect(page.locator('[data-role="search:results"] li').first).to_be_visible(timeout=20_000)
        assert await page.evaluate("window.refused") == []

        home = await page.goto(f"{client.base_url}/")
        assert home is not None and "base-uri 'none'" in home.headers["content-security-policy"]
        assert await page.evaluate("window.refused") == []
        await page.close()
