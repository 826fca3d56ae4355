"""`python -m deploy.referentiel`: load the annuaire, or generate établissements, into the référentiel.

    load FILE [--etat FICHIER [--nouvel-etat] [--confirmer-fermetures]] [--bootstrap HOST:PORT]
        [--topic-prefix P] [--dry-run]
    generate --count N [--departement 035] [--seed S] (--publish [--bootstrap ...] | --csv OUT)

The summary goes to stdout and the progress to stderr. A problem ends the command with one
line on stderr and an exit code: 1 for the data or Kafka (a malformed, truncated or empty file,
no row to load, closures beyond the guard unconfirmed, a missing topic, an unreachable broker),
2 for the command line (a bad argument, a file or a state that cannot be read or written, a
state missing or of another kind of export).
"""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from aiokafka.errors import KafkaError

from contracts import REFERENTIEL, Etablissement

from . import etat
from .csv_formats import CsvFormatError, Loaded, load, write_annuaire
from .generator import TYPES, generate
from .publish import TopicMissingError, publish_etablissements

SKIPPED_SHOWN = 10
DATA_ERROR = 1
USAGE_ERROR = 2  # argparse's own code for a bad command line


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except OSError as e:
        if e.filename is None:  # not about a path: the network
            return _fail(str(e))
        # "annuaire.csv: no such file or directory", rather than "[Errno 2] No such file or directory: '…'"
        return _fail(f"{e.filename}: {(e.strerror or str(e)).lower()}", USAGE_ERROR)
    except (CsvFormatError, TopicMissingError) as e:
        return _fail(str(e))
    except etat.EtatError as e:
        return _fail(str(e), USAGE_ERROR)
    except ValueError as e:  # an argument the generator refuses (an unknown département)
        return _fail(str(e), USAGE_ERROR)
    except KafkaError as e:
        return _fail(f"Kafka on {args.bootstrap}: {e}")


def _load(args: argparse.Namespace) -> int:
    started = time.monotonic()
    loaded = load(args.file)
    # A dry run publishes nothing: its summary speaks in the conditional.
    load_, skip = ("would load", "would skip") if args.dry_run else ("loaded", "skipped")
    print(f"{loaded.source} ({loaded.format}): {loaded.rows:,} rows read in {time.monotonic() - started:.2f} s")
    print(f"{load_} {len(loaded.etablissements):,}: {_per_type(loaded.etablissements)}")
    _report_skipped(loaded, skip)
    if not loaded.etablissements:
        return _fail(f"{loaded.source}: no row to load, all {loaded.rows:,} skipped")
    if args.etat is None:
        if args.nouvel_etat or args.confirmer_fermetures:
            return _fail("--nouvel-etat and --confirmer-fermetures go with --etat FICHIER", USAGE_ERROR)
        print("closed none: without --etat FICHIER, an établissement this file no longer lists stays open")
        return _dry_run() if args.dry_run else _publish(args, loaded.etablissements)
    held = etat.lire(args.etat, loaded.format, args.nouvel_etat)
    closing, in_scope = etat.fermetures(held, loaded)
    for e in closing[:SKIPPED_SHOWN]:
        print(f"  {e.uai}: {e.type}, {e.code_commune}: {e.nom}", file=sys.stderr)
    if len(closing) > SKIPPED_SHOWN:
        print(f"  ... and {len(closing) - SKIPPED_SHOWN:,} more", file=sys.stderr)
    if (where := etat.trop(closing, in_scope)) and not args.confirmer_fermetures:
        return _fail(
            f"{loaded.source}: {len(closing):,} établissements to close, more than {etat.MAX_SHARE:.0%} of "
            f"{where}: a file cut short, or of another scope? Nothing published; --confirmer-fermetures if they did"
        )
    close = "would close" if args.dry_run else "closed"
    told = f"{close} {len(closing):,} of the {sum(in_scope.values()):,} published open in this file's scope"
    etat.inscriptible(args.etat)  # a dry run says it too, as the load would
    if args.dry_run:
        print(f"{told}, on none of its lines")
        return _dry_run()
    _publish(args, [*loaded.etablissements, *closing])
    try:
        etat.ecrire(args.etat, loaded.format, {**held, **{e.uai: e for e in (*loaded.etablissements, *closing)}})
    except OSError as e:  # a disk full since the check: published, and said so
        return _fail(
            f"{args.etat}: published, but the state could not be written ({e.strerror or e}): the next load "
            "with it publishes this one's closures again (the same states: no second effect)"
        )
    print(f"{told}, on none of its lines; state written to {args.etat}")
    return 0


def _dry_run() -> int:
    print("dry run: nothing published")
    return 0


def _generate(args: argparse.Namespace) -> int:
    started = time.monotonic()
    etabs = list(generate(args.count, args.seed, args.departement))
    print(f"generated {len(etabs):,} (seed {args.seed}) in {time.monotonic() - started:.2f} s: {_per_type(etabs)}")
    if args.csv:
        write_annuaire(etabs, args.csv)
        print(f"written to {args.csv} (fr-en-annuaire-education format)")
    else:
        _publish(args, etabs)
    return 0


def _publish(args: argparse.Namespace, etabs: list[Etablissement]) -> int:
    topic = args.topic_prefix + REFERENTIEL
    total = len(etabs)

    def progress(published: int) -> None:
        if published % 5_000 == 0 or published == total:
            print(f"référentiel: {published:,}/{total:,} published", file=sys.stderr, flush=True)

    started = time.monotonic()
    count = asyncio.run(publish_etablissements(args.bootstrap, etabs, topic, progress=progress))
    elapsed = time.monotonic() - started
    print(
        f"published {count:,} to {topic} on {args.bootstrap} in {elapsed:.2f} s ({count / max(elapsed, 1e-9):,.0f}/s)"
    )
    return 0


def _per_type(etabs: list[Etablissement]) -> str:
    counts = {t: 0 for t in TYPES}
    for e in etabs:
        counts[e.type] += 1
    return ", ".join(f"{t} {n:,}" for t, n in counts.items())


def _report_skipped(loaded: Loaded, skipped: str) -> None:
    reasons = loaded.skipped_by_reason()
    print(
        f"{skipped} {len(loaded.skipped):,}"
        + (": " if reasons else "")
        + ", ".join(f"{reason} {n:,}" for reason, n in reasons.most_common())
    )
    for s in loaded.skipped[:SKIPPED_SHOWN]:
        print(f"  line {s.line}: {s.uai or '-'}: {s.reason}: {s.detail}", file=sys.stderr)
    if len(loaded.skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(loaded.skipped) - SKIPPED_SHOWN:,} more", file=sys.stderr)


def _fail(message: str, code: int = DATA_ERROR) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.referentiel",
        description="Load the annuaire de l'éducation, or generate établissements, into the référentiel "
        f"({REFERENTIEL}).",
        epilog=f"Exit codes: 0 done, {DATA_ERROR} a problem with the data or Kafka (closures beyond the guard too), "
        f"{USAGE_ERROR} a bad command line, a file or a state that cannot be read or written, a state missing or of "
        "another kind of export.",
    )
    commands = parser.add_subparsers(required=True, title="commands", metavar="COMMAND")

    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="Kafka broker (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    kafka.add_argument(
        "--topic-prefix", metavar="PREFIX", default="", help=f"publish to PREFIX + {REFERENTIEL} (tests)"
    )

    about = "read an annuaire CSV export and publish one établissement per row"
    load_ = commands.add_parser("load", parents=[kafka], help=about, description=about[0].upper() + about[1:] + ".")
    load_.add_argument(
        "file", metavar="FILE", help="a fr-en-annuaire-education or fr-en-adresse-et-geolocalisation CSV"
    )
    load_.add_argument("--dry-run", action="store_true", help="read and report what would be loaded, publish nothing")
    load_.add_argument(
        "--etat",
        type=Path,
        metavar="FICHIER",
        help="the établissements published before, by the loads with this file (made at the first): those this "
        "file's scope held open and none of its lines lists are closed (ouvert false)",
    )
    load_.add_argument(
        "--nouvel-etat", action="store_true", help="make the --etat file at this first load (else it must exist)"
    )
    load_.add_argument(
        "--confirmer-fermetures",
        action="store_true",
        help=f"close them even beyond {etat.MAX_SHARE:.0%} of those in the file's scope, or of one of its "
        "départements' types (else the load stops)",
    )
    load_.set_defaults(run=_load)

    about = "generate synthetic établissements, reproducible from a seed"
    gen = commands.add_parser("generate", parents=[kafka], help=about, description=about[0].upper() + about[1:] + ".")
    gen.add_argument(
        "--count", metavar="N", type=_positive, required=True, help="how many, in the national mix of types"
    )
    gen.add_argument("--departement", metavar="CODE", help="all in this département (e.g. 035); default: all France")
    gen.add_argument("--seed", metavar="S", type=int, default=0, help="same seed, same établissements (default 0)")
    out = gen.add_mutually_exclusive_group(required=True)
    out.add_argument("--publish", action="store_true", help="publish them to the référentiel topic")
    out.add_argument("--csv", metavar="OUT", help="write them as a fr-en-annuaire-education CSV")
    gen.set_defaults(run=_generate)
    return parser


if __name__ == "__main__":
    sys.exit(main())
