"""Feed the digits-stream example: append digit images to its input Redis stream, then watch the scored ones.

Usage: python examples/digits-stream/produce.py [--rows N] [--rate R] [--wait]

Records are `id, p0..p63` drawn from sklearn's bundled digits, one stream entry each (the fields of the entry
are the record's fields, as text). With `--wait` it then waits until the scored stream holds as many entries
as it sent and prints the first few. Redis is `MODELOPS_SECRET_REDIS_URL` (the flow's secret), else
redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import redis
from sklearn.datasets import load_digits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000, help="records to send (default 10000)")
    parser.add_argument("--rate", type=float, default=0.0, help="records per second (default: as fast as possible)")
    parser.add_argument("--input", default="digits:in", help="input stream (default digits:in)")
    parser.add_argument("--output", default="digits:scored", help="scored stream (default digits:scored)")
    parser.add_argument("--first-id", type=int, default=0, help="id of the first record (default 0)")
    parser.add_argument("--wait", action="store_true", help="wait until every record sent is scored")
    args = parser.parse_args()

    client = redis.Redis.from_url(os.environ.get("MODELOPS_SECRET_REDIS_URL", "redis://127.0.0.1:6379/0"))
    images = load_digits().data.astype(np.int64)
    picks = np.random.default_rng(11).integers(0, len(images), size=args.rows)
    names = ["id", *(f"p{i}" for i in range(64))]
    before = client.xlen(args.output)
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for n, pick in enumerate(picks):
        values = [args.first_id + n, *images[pick].tolist()]
        pipe.xadd(args.input, dict(zip(names, map(str, values), strict=True)))
        if len(pipe) >= 500:
            pipe.execute()
        if args.rate > 0:
            time.sleep(max(0.0, started + (n + 1) / args.rate - time.perf_counter()))
    pipe.execute()
    print(f"sent {args.rows} records to {args.input} in {time.perf_counter() - started:.1f}s")
    if not args.wait:
        return
    while (scored := client.xlen(args.output) - before) < args.rows:
        print(f"scored {scored}/{args.rows}", end="\r", flush=True)
        time.sleep(0.5)
    took = time.perf_counter() - started
    print(f"scored {args.rows} records in {took:.1f}s ({args.rows / took:,.0f} records/s); the last three:")
    for entry_id, fields in client.xrevrange(args.output, count=3):
        print(" ", entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})


if __name__ == "__main__":
    main()
