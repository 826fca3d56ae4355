"""`python -m deploy.referentiel`: load the annuaire, or generate établissements, into the référentiel.

    load FILE [--bootstrap HOST:PORT] [--topic-prefix P] [--dry-run]
    generate --count N [--departement 035] [--seed S] (--publish [--bootstrap ...] | --csv OUT)

The summary goes to stdout and the progress to stderr; a malformed file, a missing topic or an
unreachable broker end the command with one line on stderr and exit code 1.
"""

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

from aiokafka.errors import KafkaError

from contracts import REFERENTIEL, Etablissement

from .csv_formats import CsvFormatError, Loaded, load, write_annuaire
from .generator import TYPES, generate
from .publish import TopicMissingError, publish_etablissements

SKIPPED_SHOWN = 10


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except (CsvFormatError, TopicMissingError, ValueError, OSError) as e:
        return _fail(str(e))
    except KafkaError as e:
        return _fail(f"Kafka on {args.bootstrap}: {e}")


def _load(args: argparse.Namespace) -> int:
    started = time.monotonic()
    loaded = load(args.file)
    print(f"{loaded.source} ({loaded.format}): {loaded.rows:,} rows read in {time.monotonic() - started:.2f} s")
    print(f"loaded {len(loaded.etablissements):,}: {_per_type(loaded.etablissements)}")
    _report_skipped(loaded)
    if not args.dry_run:
        _publish(args, loaded.etablissements)
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


def _publish(args: argparse.Namespace, etabs: list[Etablissement]) -> None:
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


def _per_type(etabs: list[Etablissement]) -> str:
    counts = {t: 0 for t in TYPES}
    for e in etabs:
        counts[e.type] += 1
    return ", ".join(f"{t} {n:,}" for t, n in counts.items())


def _report_skipped(loaded: Loaded) -> None:
    reasons = loaded.skipped_by_reason()
    print(
        f"skipped {len(loaded.skipped):,}"
        + (": " if reasons else "")
        + ", ".join(f"{reason} {n:,}" for reason, n in reasons.most_common())
    )
    for s in loaded.skipped[:SKIPPED_SHOWN]:
        print(f"  line {s.line}: {s.uai or '-'}: {s.reason}: {s.detail}", file=sys.stderr)
    if len(loaded.skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(loaded.skipped) - SKIPPED_SHOWN:,} more", file=sys.stderr)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deploy.referentiel", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="{load,generate}")

    kafka = argparse.ArgumentParser(add_help=False)
    kafka.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
        help="HOST:PORT (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)",
    )
    kafka.add_argument("--topic-prefix", default="", help=f"published to PREFIX + {REFERENTIEL}")

    load_ = commands.add_parser("load", parents=[kafka], help="read an annuaire CSV export and publish it")
    load_.add_argument("file", help="fr-en-annuaire-education or fr-en-adresse-et-geolocalisation CSV")
    load_.add_argument("--dry-run", action="store_true", help="read and report only, publish nothing")
    load_.set_defaults(run=_load)

    gen = commands.add_parser("generate", parents=[kafka], help="generate synthetic établissements")
    gen.add_argument("--count", type=int, required=True, help="how many, in the national mix of types")
    gen.add_argument("--departement", help="all in this département (e.g. 035); default: all of France")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same établissements (default 0)")
    out = gen.add_mutually_exclusive_group(required=True)
    out.add_argument("--publish", action="store_true", help="publish them to the référentiel topic")
    out.add_argument("--csv", metavar="OUT", help="write them as a fr-en-annuaire-education CSV")
    gen.set_defaults(run=_generate)
    return parser


if __name__ == "__main__":
    sys.exit(main())
