"""The README's table of WARNING and ERROR lines ("What a WARNING or an ERROR line means") names
every such line the services write, and no other: an operator looks a line up there."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
LEVELS = {"warning", "error", "exception", "critical"}


def _levels_of(func: ast.expr) -> set[str]:
    """`log.warning`, or `(log.error if … else log.warning)`: the levels a call writes at."""
    if isinstance(func, ast.IfExp):
        return _levels_of(func.body) | _levels_of(func.orelse)
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("log", "_log"):
        return {func.attr} & LEVELS
    return set()


def written() -> set[str]:
    events: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            texts = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if isinstance(node.func, ast.Name) and node.func.id == "Outage":  # Outage(log, event, …): its failures
                if isinstance(node.args[1], ast.Constant):  # else retention's, below
                    events.add(node.args[1].value)
            elif getattr(node.func, "attr", None) == "say" and node.args and _levels_of(node.args[0]):
                events.add(texts[0])  # EveryFew.say(log.warning, event, …)
            elif not texts or not isinstance(node.args[0], ast.Constant):
                continue
            elif _levels_of(node.func):
                events.add(texts[0])
            elif "periodically" in (getattr(node.func, "attr", None), getattr(node.func, "id", None)):  # retention
                events.add(f"{texts[0]}.purge_failed")
    # Said by dlq.Told: "event.rejected" and "event.rejudged" per batch, as "events.…" warnings;
    # by the relay's Outage, as the state it waits in (outbox.py, `_READ_ONLY`).
    return events | {"events.rejected", "events.rejudged", "outbox.database_read_only"}


def _table() -> str:
    """The README's section "What a WARNING or an ERROR line means"."""
    readme = (ROOT / "README.md").read_text()
    return readme.split("### What a WARNING or an ERROR line means", 1)[1].split("\n## ", 1)[0]


def tabled() -> set[str]:
    return set(re.findall(r"^\| `([a-z0-9_.]+)` \|", _table(), re.MULTILINE))


def test_the_readme_tells_every_warning_and_error_line_and_no_other():
    code, readme = written(), tabled()
    assert len(code) > 50, "the scan finds the services' lines"
    assert code - readme == set(), "written, not in the README's table"
    assert readme - code == set(), "in the README's table, written by no code"


_SHOWN_AS = {"warning": "WARNING", "error": "ERROR", "exception": "ERROR", "critical": "CRITICAL"}


def _direct_levels() -> dict[str, set[str]]:
    """The levels (WARNING, ERROR, CRITICAL, and `traceback`) each event is written at by plain
    `log.<level>(event, …)` calls, of the events no other way writes (Outage, EveryFew, retention:
    their rows tell their own pattern of levels)."""
    found: dict[str, set[str]] = {}
    indirect: set[str] = set()
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            if getattr(node.func, "id", None) == "Outage" or getattr(node.func, "attr", None) == "say":
                if len(node.args) > 1 and isinstance(node.args[1], ast.Constant):  # Outage(log, event, …), say(…)
                    indirect.add(str(node.args[1].value))
                continue
            if not isinstance(node.args[0], ast.Constant):
                continue
            levels = _levels_of(node.func)
            if not levels:
                continue
            traced = "exception" in levels or any(k.arg == "exc_info" for k in node.keywords)
            found.setdefault(str(node.args[0].value), set()).update({_SHOWN_AS[lv] for lv in levels})
            if traced:
                found[str(node.args[0].value)].add("traceback")
    return {event: levels for event, levels in found.items() if event not in indirect}


def test_the_readme_tells_each_line_s_level_as_the_code_writes_it():
    """An event moved to another level, or given its traceback, was still in the table by name."""
    told = {m[0]: m[1] for m in re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]+) \|", _table(), re.MULTILINE)}
    direct = _direct_levels()
    assert len(direct) > 30, "the scan finds the services' plain calls"
    wrong = {}
    for event, levels in direct.items():
        column = told.get(event, "")
        shown = {w for w in ("WARNING", "ERROR", "CRITICAL") if w in column} | ({"traceback"} & set(column.split()))
        if levels != shown:
            wrong[event] = (sorted(levels), column.strip())
    assert wrong == {}, "the table's level column, against the code's calls"


def _told() -> dict[str, str]:
    """Each row's event and level column."""
    return {m[0]: m[1].strip() for m in re.findall(r"^\| `([a-z0-9_.]+)` \| ([^|]+) \|", _table(), re.MULTILINE)}


def test_the_readme_tells_the_levels_of_the_lines_said_once_per_outage_or_every_few_seconds():
    """Outage: a WARNING once while what it waits on is away, an ERROR with its traceback on any
    other failure (unless everything counts as away); EveryFew: its level, at most once per
    LINE_SECONDS. Their rows were checked by name alone (audit s72 #5)."""
    from services.common.runtime.outages import LINE_SECONDS

    told, wrong, seen = _told(), {}, 0
    for path in (ROOT / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if _purge(node):  # retention.periodically("x", …): an Outage of x.purge_failed
                node = ast.Call(ast.Name("Outage"), [ast.Name("log"), ast.Constant(f"{_purge(node)}.purge_failed")], [])
            if not isinstance(node, ast.Call) or len(node.args) < 2 or not isinstance(node.args[1], ast.Constant):
                continue
            event, column = str(node.args[1].value), told.get(str(node.args[1].value), "")
            if getattr(node.func, "id", None) == "Outage" or event.endswith(".purge_failed"):
                away = next((ast.unparse(k.value) for k in node.keywords if k.arg == "away"), None)
                expected = ["WARNING"] if away == "(Exception,)" else ["WARNING once", "ERROR + traceback"]
                shown = [e for e in ("WARNING once", "ERROR + traceback") if e in column] or column.split()[:1]
            elif getattr(node.func, "attr", None) == "say" and _levels_of(node.args[0]):
                expected = [_SHOWN_AS[next(iter(_levels_of(node.args[0])))], f"once per {LINE_SECONDS:g} s"]
                shown = [w for w in ("WARNING", "ERROR") if column.startswith(w)]
                shown += [f"once per {LINE_SECONDS:g} s"] if f"once per {LINE_SECONDS:g} s" in _row(event) else []
            else:
                continue
            seen += 1
            if shown != expected:
                wrong[event] = (expected, column)
    assert seen > 10, "the scan finds the Outage and EveryFew lines"
    assert wrong == {}


def _purge(node: ast.AST) -> str | None:
    """What `periodically(what, …)` purges, for a call of it."""
    if not isinstance(node, ast.Call) or not node.args or not isinstance(node.args[0], ast.Constant):
        return None
    named = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
    return str(node.args[0].value) if named == "periodically" else None


def _row(event: str) -> str:
    return next(line for line in _table().splitlines() if line.startswith(f"| `{event}` |"))
