"""Reads every event of a Tidings deployment with a plain Kafka client.

    python read_events.py [BROKERS] [TOPIC_PREFIX]

No Tidings code: the events topic is `<prefix>.events`, each record an event
envelope in JSON (schemas/json/event-envelope.v2.json), keyed by
`<aggregate type>:<aggregate id>`, with headers `type` and `version`. The
consumer is assigned every partition from the beginning and joins no group
(it commits nothing), so it never disturbs Tidings' own consumers. It stops
when every partition is read to its end, and prints a count per event type.
"""

import collections
import json
import sys

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

brokers = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
topic = (sys.argv[2] if len(sys.argv) > 2 else "tidings") + ".events"

consumer = Consumer({
    "bootstrap.servers": brokers,
    # Required by the client, never used: partitions are assigned below.
    "group.id": "analyst-notebook",
    "enable.auto.commit": False,
    "enable.partition.eof": True,
})
partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])

counts = collections.Counter()
at_end = set()
while len(at_end) < len(partitions):
    record = consumer.poll(5.0)
    if record is None:
        break  # quiet for 5 s: nothing more is coming now
    if record.error():
        if record.error().code() == KafkaError._PARTITION_EOF:
            at_end.add(record.partition())
            continue
        raise SystemExit(record.error())
    event = json.loads(record.value())
    headers = dict(record.headers() or [])
    assert headers.get("type", b"").decode() in ("", event["type"])
    counts[(event["type"], event["version"])] += 1
consumer.close()

for (event_type, version), n in sorted(counts.items()):
    print(f"{event_type} v{version}\t{n}")
print(f"total\t{sum(counts.values())}")
