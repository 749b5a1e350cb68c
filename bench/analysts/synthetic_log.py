"""The synthetic event log the analysts' benchmarks read, and the raw rate.

`ensure(brokers, prefix, total)` writes `total` event envelopes
(post.created and post.commented over 10,000 posts, each aggregate's chain
intact, about 600 bytes each, the shape Tidings writes) to
`<prefix>.events` (4 partitions, keyed as Tidings keys them), unless the
topic already holds them, creating the four topics if missing.
`count_records(brokers, topic)` reads the whole topic raw with
confluent-kafka (librdkafka, as Tidings) and returns (records, seconds).
"""

import json
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

POSTS = 10_000


class Figures:
    """What a benchmark prints, kept for its results file
    (`bench/results/analysts/<name>.txt`)."""

    def __init__(self, name):
        self.path = Path(__file__).resolve().parent.parent / "results" / "analysts" / f"{name}.txt"
        self.lines = []

    def say(self, line):
        print(line, flush=True)
        self.lines.append(line)

    def write(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        self.path.write_text(f"# {' '.join(sys.argv[1:])} ({stamp})\n" + "\n".join(self.lines) + "\n")
        print(f"written to {self.path}", flush=True)


def count_records(brokers, topic):
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


def ensure(brokers, prefix, total):
    topic = prefix + ".events"
    admin = AdminClient({"bootstrap.servers": brokers})
    existing = admin.list_topics(timeout=10).topics
    if topic not in existing:
        for name in ("commands", "events", "command-results", "updates"):
            admin.create_topics([NewTopic(f"{prefix}.{name}", 4, 1)])[f"{prefix}.{name}"].result()
    have, _ = count_records(brokers, topic)
    if have >= total:
        return
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

