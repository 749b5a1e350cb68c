"""Replay's rate next to the raw consume rate of the same topic, same run.

    python replay_rate.py BROKERS PREFIX EVENTS TIDINGS_BINARY

Writes EVENTS event envelopes (post.created and post.commented over 10,000
posts, each aggregate's chain intact, about 600 bytes each, the shape
Tidings writes) to `<PREFIX>.events` (4 partitions, keyed as Tidings keys
them), unless the topic already holds them; then reads the whole topic:
1. raw, with confluent-kafka (librdkafka, as Tidings), counting records;
2. with `tidings replay` to NDJSON, CSV and Parquet files (the sequence rule,
   upcasting, redaction and encoding included);
and prints records/s of each.
"""

import os
import subprocess
import sys
import tempfile
import time

from synthetic_log import Figures, count_records, ensure

FIGURES = Figures("replay")
say = FIGURES.say

brokers, prefix, total, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
topic = prefix + ".events"

ensure(brokers, prefix, total)
n, elapsed = count_records(brokers, topic)
say(f"raw consume (confluent-kafka): {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s")

env = dict(os.environ, TIDINGS_KAFKA_BROKERS=brokers, TIDINGS_TOPIC_PREFIX=prefix, RUST_LOG="warn")
with tempfile.TemporaryDirectory() as out:
    for fmt in ("ndjson", "csv", "parquet"):
        path = os.path.join(out, "events." + fmt)
        started = time.monotonic()
        run = subprocess.run([binary, "replay", "--format", fmt, "-o", path, "--progress", "plain"],
                             env=env, capture_output=True, text=True, check=True)
        elapsed = time.monotonic() - started
        summary = [l for l in run.stderr.splitlines() if "records read" in l][-1]
        say(f"tidings replay --format {fmt}: {elapsed:.2f} s wall = {n / elapsed:,.0f} records/s "
            f"({os.path.getsize(path) / 1e6:.0f} MB); {summary}")
FIGURES.write()
