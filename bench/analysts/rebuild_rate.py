"""`tidings rebuild`'s rate next to the raw consume rate of the same topic,
same run.

    python rebuild_rate.py BROKERS PREFIX EVENTS TIDINGS_BINARY [ADMIN_DATABASE_URL]

Writes the synthetic log of `synthetic_log.py` (EVENTS envelopes) unless the
topic holds it, then:
1. reads the whole topic raw with confluent-kafka, counting records;
2. creates a database of its own (`<PREFIX>_rebuild`, on the server of
   ADMIN_DATABASE_URL, postgres://postgres@127.0.0.1:5432/postgres by
   default), migrates it, and starts `tidings serve --roles projector` on it:
   the live projector projects the whole topic (its rate is printed too);
3. with that projector still running, runs `tidings rebuild`: the log into a
   new schema, digests compared, switch; prints its summary (events/s, how
   long the live projector paused);
4. stops the projector, drops the database and its Redis keys.
"""

import os
import signal
import subprocess
import sys
import time

from synthetic_log import Figures, count_records, ensure

FIGURES = Figures("rebuild")
say = FIGURES.say

brokers, prefix, total, binary = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
admin_url = sys.argv[5] if len(sys.argv) > 5 else "postgres://postgres@127.0.0.1:5432/postgres"
topic = prefix + ".events"
database = f"{prefix}_rebuild".replace(".", "_").replace("-", "_")
database_url = admin_url.rsplit("/", 1)[0] + "/" + database


def sql(url, statement):
    return subprocess.run(["psql", url, "-Atc", statement], capture_output=True, text=True,
                          check=True).stdout.strip()


ensure(brokers, prefix, total)
n, elapsed = count_records(brokers, topic)
say(f"raw consume (confluent-kafka): {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s")

env = dict(os.environ, TIDINGS_KAFKA_BROKERS=brokers, TIDINGS_TOPIC_PREFIX=prefix,
           TIDINGS_DATABASE_URL=database_url, TIDINGS_REDIS_PREFIX=database,
           TIDINGS_HTTP_ADDR="127.0.0.1:0", TIDINGS_INSTANCE_ID=database, RUST_LOG="warn")
sql(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
sql(admin_url, f'CREATE DATABASE "{database}"')
serve = None
try:
    subprocess.run([binary, "migrate"], env=env, check=True, capture_output=True)
    serve = subprocess.Popen([binary, "serve", "--roles", "projector"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    projected = 0
    while projected < n:
        time.sleep(1.0)
        if serve.poll() is not None:
            sys.exit("the projector stopped")
        projected = int(sql(database_url, "SELECT coalesce(sum(next_offset), 0) FROM projector_offsets"))
    elapsed = time.monotonic() - started
    say(f"live projector (tidings serve --roles projector, from its start): {projected} records in "
        f"{elapsed:.1f} s = {projected / elapsed:,.0f} records/s")

    started = time.monotonic()
    run = subprocess.run([binary, "rebuild", "--progress", "plain", "--drop-old"], env=env,
                         capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if run.returncode != 0:
        sys.exit(f"tidings rebuild failed:\n{run.stdout}\n{run.stderr}")
    say(f"tidings rebuild: {elapsed:.1f} s wall = {n / elapsed:,.0f} records/s (schema, migrations, "
        f"catch-up, digests and switch)")
    for line in run.stdout.splitlines():
        if not line.startswith("rebuild:   "):
            say("  " + line)
    FIGURES.write()
finally:
    if serve is not None:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.kill()
    sql(admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    # The projector's Redis keys (hot rings, caches) under the run's prefix.
    keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"{database}:*"], capture_output=True,
                          text=True).stdout.split()
    for i in range(0, len(keys), 500):
        subprocess.run(["redis-cli", "del", *keys[i:i + 500]], capture_output=True)
