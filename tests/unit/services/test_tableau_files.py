"""The dashboard page's files as the API serves them: their validator is their content's."""

import os

from starlette.requests import Request

from services.ressources.api_tableau import served


def _asked(etag: str | None = None) -> Request:
    headers = [(b"if-none-match", etag.encode())] if etag else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": headers})


def test_a_file_edited_to_the_same_size_and_time_is_not_taken_for_the_copy_held(tmp_path):
    """A reproducible image sets every file's time to one instant: an edit that kept the script's
    size (a constant changed, a letter fixed) had the former's ETag, and browsers were told their
    former copy was this one (audit s67 read-API F2)."""
    script = tmp_path / "tableau.js"
    script.write_text("const QUIET_MS = 300;")
    os.utime(script, ns=(0, 0))
    held = served(_asked(), script, "text/javascript").headers["etag"]
    assert served(_asked(held), script, "text/javascript").status_code == 304

    script.write_text("const QUIET_MS = 250;")
    os.utime(script, ns=(0, 0))
    again = served(_asked(held), script, "text/javascript")
    assert again.status_code == 200 and again.headers["etag"] != held
