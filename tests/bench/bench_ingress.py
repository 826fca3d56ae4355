"""`./dev bench`: every figure of issue 8's table, each with its baseline measured in the same run.

    ./dev bench [ingress | replicas | latency | national | passerelle | simulations | rebalance | all ...]

- ingress: each service alone on a pre-filled topic of --events valid events, against a raw
  aiokafka consumer that json-decodes and commits the same records (ingress.py);
- replicas: --replicas replicas of --replica-service in one group on that topic, against one
  replica; and the share of transaction time spent waiting on a lock (rows, advisory) (replicas.py);
- latency: ingress -> alert p50/p99/max at each of --rates for --duration seconds, against a
  plain record's produce -> consume latency at the same rate; whether the platform keeps up;
  first, up to --warm-up seconds of the same traffic until the broker's JIT has settled, and at
  each rate --ramp seconds of it before the measure, reported apart (latency.py);
- national: --etablissements subscriptions -> last alert, a stricter republication -> last
  alert (a no-change one as its baseline), and each service's peak RSS (national.py);
- passerelle: --events lots posted over HTTP in batches of 1,000 (--clients requests in
  flight) until Kafka has them, against a raw producer writing the same events (passerelle.py);
- simulations: POST /simulations/ressource over --etablissements subscribed, then every open
  one, and POST /simulations/equipement for one région's lycées, each answer within 2 s (issue
  11), the first (cold) answer as baseline (simulations.py);
- rebalance: the longest a lot waits when one of two replicas is SIGKILLed and restarted, with
  static membership against dynamic membership (issue 10; rebalance.py).

Starts its own Kafka and PostgreSQL; every measurement gets its own topics and database, and
runs the services as real processes. Prints each figure as it is measured, then one table:
figure, measured, baseline, target, PASS/FAIL against issue 8's target. A benchmark, not a
test: CI does not run it, and a FAIL does not change the exit code. `./dev bench` runs this
file (its name predates the other figures).
"""

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import ingress
import latency
import national
import passerelle
import rebalance
import replicas
import simulations
from harness import Row, Runtime, runtime

FIGURES = ("ingress", "replicas", "latency", "national", "passerelle", "simulations", "rebalance")  # run order


async def bench(args: argparse.Namespace) -> list[Row]:
    figures: dict[str, Callable[[Runtime], Awaitable[list[Row]]]] = {
        "ingress": lambda run: ingress.figure(run, args.services, args.events),
        "replicas": lambda run: replicas.figure(run, args.replica_service, args.events, args.replicas),
        "latency": lambda run: latency.figure(
            run, args.rates, args.duration, args.uais, args.drain_timeout, args.warm_up, args.ramp
        ),
        "national": lambda run: national.figure(run, args.etablissements),
        "passerelle": lambda run: passerelle.figure(run, args.events, args.clients),
        "simulations": lambda run: simulations.figure(run, args.etablissements, args.distinct),
        "rebalance": rebalance.figure,
    }
    chosen = [f for f in FIGURES if f in args.figures or "all" in args.figures or not args.figures]
    rows: list[Row] = []
    async with runtime() as run:
        for name in chosen:
            try:
                rows += await figures[name](run)
            except (TimeoutError, RuntimeError) as e:  # a service that never caught up, or did not start
                print(f"  {name}: not measured: {e}")
                rows.append(Row(name, f"not measured: {str(e).splitlines()[0][:100]}", "", "", False))
    return rows


def table(rows: list[Row]) -> str:
    lines = [("figure", "measured", "baseline (same run)", "target", "result")]
    lines += [(r.figure, r.measured, r.baseline, r.target, "PASS" if r.ok else "FAIL") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # Not argparse's choices: Python 3.11 checks a "*" argument's default against them, and fails.
    parser.add_argument("figures", nargs="*", metavar="FIGURE", help=f"{', '.join(FIGURES)} or all (the default)")
    parser.add_argument("--events", type=int, default=100_000, help="ingress and replicas: records on the topic")
    parser.add_argument(
        "--services",
        nargs="+",
        choices=sorted(ingress.DECLARES),
        default=sorted(ingress.DECLARES),
        help="ingress: the services measured",
    )
    parser.add_argument("--replica-service", choices=sorted(ingress.DECLARES), default="equipement")
    parser.add_argument("--clients", type=int, default=4, help="passerelle: HTTP requests in flight at a time")
    parser.add_argument("--replicas", type=int, default=2, help="replicas: how many in the group (vs one)")
    parser.add_argument("--rates", type=int, nargs="+", default=[200, 1000, 2000], help="latency: events per second")
    parser.add_argument("--duration", type=float, default=20, help="latency: seconds of sending at each rate")
    parser.add_argument(
        "--ramp",
        type=float,
        default=5,
        help="latency: seconds of traffic at each rate before the measure, on its stage, reported apart (0: none)",
    )
    parser.add_argument("--uais", type=int, default=5000, help="latency: collèges flipped in turn")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=60,
        help="latency: seconds to wait for the backlog after the producer stops",
    )
    parser.add_argument(
        "--warm-up",
        type=float,
        default=180,
        help="latency: at most this many seconds of traffic before the first measure, until the broker's JIT "
        "compilers have settled (0: none)",
    )
    parser.add_argument(
        "--etablissements", type=int, default=60_000, help="national and simulations: établissements (scale)"
    )
    parser.add_argument(
        "--distinct", action="store_true", help="simulations: every établissement's inputs differ (else 120 sets)"
    )
    args = parser.parse_args()
    if unknown := set(args.figures) - {*FIGURES, "all"}:
        parser.error(f"unknown figure {', '.join(sorted(unknown))}: choose among {', '.join(FIGURES)} or all")
    started = time.monotonic()
    rows = asyncio.run(bench(args))
    print(f"\n== issue 8's table ({time.monotonic() - started:.0f} s in all)\n{table(rows)}")


if __name__ == "__main__":
    main()
