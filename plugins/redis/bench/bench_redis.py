"""Compare polybus on Redis with raw redis-py: ``python bench/bench_redis.py``.

Options: ``--url``, ``--count``, ``--batch``, ``--value-bytes``, ``--rounds``,
``--profile`` (writes a cProfile of the whole run to ``bench-redis.prof``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile

from polybus_redis.bench import run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()

    run = run_benchmark(args.url, args.count, args.batch, args.value_bytes, args.rounds)
    if args.profile:
        profiler = cProfile.Profile()
        result = profiler.runcall(asyncio.run, run)
        profiler.dump_stats("bench-redis.prof")
    else:
        result = asyncio.run(run)

    print(result.report())


if __name__ == "__main__":
    main()
