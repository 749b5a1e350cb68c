-- DuckDB over a Parquet export of the log (`tidings replay --format parquet
-- -o events.parquet`): one row per event, the envelope's fields as columns,
-- `data` as JSON text. Run: duckdb < summary.sql (or duckdb.sql(...) in Python).

-- Events per type and day.
SELECT type, date_trunc('day', occurred_at) AS day, count(*) AS events
FROM 'events.parquet'
GROUP BY ALL
ORDER BY day, events DESC;

-- Messages per room, with the busiest writer of each.
SELECT aggregate_id AS room,
       count(*) AS messages,
       mode(actor) AS busiest_writer
FROM 'events.parquet'
WHERE type = 'room.message_posted'
GROUP BY room
ORDER BY messages DESC
LIMIT 10;

-- A field of `data`: the text of posts, longest first.
SELECT occurred_at, actor, json_extract_string(data, '$.text') AS text
FROM 'events.parquet'
WHERE type = 'post.created'
ORDER BY length(text) DESC
LIMIT 5;
