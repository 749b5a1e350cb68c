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

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

brokers, prefix, total, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
topic = prefix + ".events"
POSTS = 10_000

admin = AdminClient({"bootstrap.servers": brokers})
existing = admin.list_topics(timeout=10).topics
if topic not in existing:
    for name in ("commands", "events", "command-results", "updates"):
        admin.create_topics([NewTopic(f"{prefix}.{name}", 4, 1)])[f"{prefix}.{name}"].result()


def count_records():
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": "replay-rate",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "fetch.wait.max.ms": 10})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    n, ends, started = 0, set(), time.monotonic()
    while len(ends) < len(parts):
        batch = consumer.consume(num_messages=10_000, timeout=5.0)
        if not batch:
            break
        for record in batch:
            error = record.error()
            if error is None:
                n += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                ends.add(record.partition())
    elapsed = time.monotonic() - started
    consumer.close()
    return n, elapsed


have, _ = count_records()
if have < total:
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20,
                         "batch.num.messages": 10_000, "queue.buffering.max.messages": 500_000})
    posts = [str(uuid.uuid4()) for _ in range(POSTS)]
    authors = [str(uuid.uuid4()) for _ in range(1_000)]
    last = {}
    started = time.monotonic()
    for i in range(have, total):
        post = posts[i % POSTS]
        sequence, previous, post_author = last.get(post, (0, None, None))
        event_id = str(uuid.uuid4())
        author = authors[i % len(authors)]
        at = "2026-12-01T02:00:00.%06dZ" % (i % 1_000_000)
        if sequence == 0:
            post_author = author
            event_type = "post.created"
            data = {"post_id": post, "author": author, "text": "a post of the replay benchmark, " + "x" * 120,
                    "visibility": "public", "created_at": at}
        else:
            event_type = "post.commented"
            data = {"post_id": post, "post_author": post_author, "comment_id": str(uuid.uuid4()), "author": author,
                    "text": "a comment of the replay benchmark, " + "y" * 100, "commented_at": at}
        envelope = {"event_id": event_id, "type": event_type, "version": 1,
                    "aggregate": {"type": "post", "id": post}, "sequence": sequence + 1,
                    "previous": previous, "occurred_at": at, "actor": author,
                    "command_id": str(uuid.uuid4()), "correlation_id": str(uuid.uuid4()), "data": data}
        last[post] = (sequence + 1, event_id, post_author)
        while True:
            try:
                producer.produce(topic, key=f"post:{post}", value=json.dumps(envelope),
                                 headers={"type": event_type, "version": "1"})
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    producer.flush()
    print(f"produced {total - have} records in {time.monotonic() - started:.1f} s", flush=True)

n, elapsed = count_records()
print(f"raw consume (confluent-kafka): {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s", flush=True)

env = dict(os.environ, TIDINGS_KAFKA_BROKERS=brokers, TIDINGS_TOPIC_PREFIX=prefix, RUST_LOG="warn")
with tempfile.TemporaryDirectory() as out:
    for fmt in ("ndjson", "csv", "parquet"):
        path = os.path.join(out, "events." + fmt)
        started = time.monotonic()
        run = subprocess.run([binary, "replay", "--format", fmt, "-o", path, "--progress", "plain"],
                             env=env, capture_output=True, text=True, check=True)
        elapsed = time.monotonic() - started
        summary = [l for l in run.stderr.splitlines() if "records read" in l][-1]
        print(f"tidings replay --format {fmt}: {elapsed:.2f} s wall = {n / elapsed:,.0f} records/s "
              f"({os.path.getsize(path) / 1e6:.0f} MB); {summary}", flush=True)
