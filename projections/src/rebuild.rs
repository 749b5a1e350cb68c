//! Rebuilding the read models from the log beside the live ones, and
//! switching to them (`tidings rebuild`; the command and its reading of the
//! log are in the binary's `src/rebuild.rs`).
//!
//! - **What is rebuilt**: the tables the projections write
//!   ([`crate::projection::tables`]) and the projector's own
//!   ([`PROJECTOR_TABLES`]). Every other table of the live schema is kept as
//!   it is: the API's, the deciders' and the mailer's memory (credentials,
//!   idempotency keys, decider snapshots, the mail outbox…), and the
//!   channels with their outbox, whose `seq`s clients resume from.
//! - **Where**: a schema of its own ([`REBUILD_PREFIX`]), made by the same
//!   migrations, written by the same projector code through sessions whose
//!   `search_path` is that schema ([`crate::db::connect_in_schema`]).
//! - **Verified**: in a snapshot taken under the lock that pauses the live
//!   projector's commits ([`lock_live`]), both schemas stand at the same
//!   offsets, and each rebuilt table has the same [`Digest`] in both.
//! - **The switch** ([`switch`]), under that lock taken again once the
//!   rebuild has caught up with what the live projector did meanwhile: the kept tables
//!   move into the new schema, what of the rebuilt tables is not a function
//!   of the log is carried over ([`NOT_FROM_THE_LOG`]), then the live schema
//!   is renamed to [`OLD_PREFIX`]… and the new one takes its name. Readers see
//!   the old schema or the new one, never neither: PostgreSQL resolves a
//!   name again (prepared statements too) once the renames commit.

use std::collections::BTreeMap;

use sqlx::{PgConnection, PgPool};

/// The schema a rebuild writes into: this and the time it began.
pub const REBUILD_PREFIX: &str = "tidings_rebuild_";
/// The live schema, once replaced: this and the time its rebuild began.
pub const OLD_PREFIX: &str = "tidings_old_";

/// The projector's own tables, rebuilt with the read models.
pub const PROJECTOR_TABLES: &[&str] = &["projector_offsets", "projected_aggregates", "event_index"];

/// Every table a rebuild writes and compares, sorted.
pub fn rebuilt_tables() -> Vec<&'static str> {
    let mut tables = crate::projection::tables();
    tables.extend_from_slice(PROJECTOR_TABLES);
    tables.sort_unstable();
    tables.dedup();
    tables
}

/// Parts of rebuilt tables that are not a function of the log: left out of
/// the digests, and carried over from the live schema at the switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotFromTheLog {
    pub table: &'static str,
    /// Columns left out of the digest.
    pub columns: &'static [&'static str],
    /// Rows the digest covers (an SQL condition), if not all.
    pub rows: Option<&'static str>,
}

pub const NOT_FROM_THE_LOG: &[NotFromTheLog] = &[
    // The cache's version of a row counts every change to it, and counts
    // moved by events of other partitions come in whatever order the
    // partitions were read: the live version is kept (the Redis entries
    // carry it).
    NotFromTheLog {
        table: "accounts",
        columns: &["version"],
        rows: None,
    },
    // `mailed_at` is the mailer's; a `message` notification exists only for
    // readers who were offline when the live projector applied the message
    // (presence is not in the log). A `mention` exists only if the mentioned
    // account was projected when the post was, and "mark all read" marks
    // the notifications projected by then: both read what other partitions'
    // events wrote, in the order the live projector happened to read the
    // partitions, which a rebuild does not repeat.
    NotFromTheLog {
        table: "notifications",
        columns: &["mailed_at", "read_at"],
        rows: Some("kind NOT IN ('message', 'mention')"),
    },
    // The media sweeper removes the rows of deleted items once their
    // objects are gone; the log brings them back (and the sweeper removes
    // them again).
    NotFromTheLog {
        table: "media",
        columns: &[],
        rows: Some("deleted_at IS NULL"),
    },
    NotFromTheLog {
        table: "projector_offsets",
        columns: &["updated_at"],
        rows: None,
    },
];

/// The SQL to carry over, at the switch, what [`NOT_FROM_THE_LOG`] leaves
/// out of the digests, from `live` into `new`.
fn carry_over(live: &str, new: &str) -> Vec<String> {
    let (live, new) = (ident(live), ident(new));
    vec![
        format!(
            "UPDATE {new}.accounts n SET version = greatest(n.version, l.version)
             FROM {live}.accounts l WHERE l.id = n.id"
        ),
        format!(
            "UPDATE {new}.notifications n SET mailed_at = l.mailed_at
             FROM {live}.notifications l WHERE l.id = n.id AND l.mailed_at IS NOT NULL"
        ),
        format!(
            "UPDATE {new}.notifications n SET read_at = l.read_at
             FROM {live}.notifications l WHERE l.id = n.id AND l.read_at IS DISTINCT FROM n.read_at"
        ),
        format!("DELETE FROM {new}.notifications WHERE kind IN ('message', 'mention')"),
        format!(
            "INSERT INTO {new}.notifications SELECT * FROM {live}.notifications WHERE kind IN ('message', 'mention')"
        ),
    ]
}

/// A name quoted as an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `name` is a schema a rebuild made (a kept old one, or one left
/// by a rebuild that did not switch): only those may be dropped by it.
pub fn is_rebuild_schema(name: &str) -> bool {
    let stamp = name
        .strip_prefix(OLD_PREFIX)
        .or_else(|| name.strip_prefix(REBUILD_PREFIX));
    stamp.is_some_and(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// A table's content, independent of row order: how many rows, and the sum
/// of the first 64 bits of each row's MD5 (as numeric, so it never
/// overflows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digest {
    pub rows: i64,
    pub sum: String,
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows, sum {}", self.rows, self.sum)
    }
}

/// The query of a table's [`Digest`] over `columns`, in `schema`.
pub fn digest_sql(schema: &str, table: &str, columns: &[String], rows: Option<&str>) -> String {
    let columns: Vec<String> = columns.iter().map(|c| format!("t.{}", ident(c))).collect();
    // ROW(a)::text of one column is "(a)", of several "(a,b)": either way
    // the row's text in the session's formats (both schemas are read by one
    // session).
    format!(
        "SELECT count(*)::bigint, coalesce(sum(('x' || left(md5(ROW({})::text), 16))::bit(64)::bigint::numeric), 0)::text
         FROM {}.{} t{}",
        columns.join(", "),
        ident(schema),
        ident(table),
        rows.map(|r| format!(" WHERE {r}")).unwrap_or_default()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the live schema {live} is at migration {live_version:?}, this build at {build_version:?}: run `tidings migrate` with the build that serves, and rebuild with that build")]
    Migrations {
        live: String,
        live_version: Option<i64>,
        build_version: Option<i64>,
    },
    #[error("table {table} has other columns in {live} ({live_columns:?}) than in the rebuild ({new_columns:?})")]
    Columns {
        table: String,
        live: String,
        live_columns: Vec<String>,
        new_columns: Vec<String>,
    },
    #[error("the rebuilt read models differ from the live ones (the rebuild schema {schema} is kept for a look; drop it with `tidings rebuild --drop {schema}`): {differences}")]
    Differ { schema: String, differences: String },
    #[error("the rebuild stands at {rebuilt:?}, the live projector at {live:?}")]
    Offsets {
        rebuilt: BTreeMap<i32, i64>,
        live: BTreeMap<i32, i64>,
    },
    #[error("{0} is not a schema a rebuild made (tidings_old_… or tidings_rebuild_…), or it is the live one")]
    NotARebuildSchema(String),
}

/// The schema a plain session of the live roles reads (`public` unless the
/// database says otherwise).
pub async fn live_schema(db: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(db)
        .await
}

/// Creates the rebuild's schema. Refuses to reuse one.
pub async fn create_schema(db: &PgPool, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("CREATE SCHEMA {}", ident(schema)))
        .execute(db)
        .await?;
    Ok(())
}

/// Migrates the rebuild's schema (through its pool, whose `search_path` is
/// it) and checks that the live schema is at the same migration.
pub async fn migrate(
    live: &PgPool,
    rebuild: &PgPool,
    live_schema: &str,
) -> Result<(), RebuildError> {
    crate::db::migrate(rebuild).await?;
    let version = |schema: String| async move {
        sqlx::query_scalar::<_, Option<i64>>(&format!(
            "SELECT max(version) FROM {}._sqlx_migrations WHERE success",
            ident(&schema)
        ))
        .fetch_one(live)
        .await
    };
    let live_version = version(live_schema.to_owned()).await?;
    let build_version = crate::db::MIGRATOR.iter().map(|m| m.version).max();
    if live_version != build_version {
        return Err(RebuildError::Migrations {
            live: live_schema.to_owned(),
            live_version,
            build_version,
        });
    }
    Ok(())
}

/// The next offset of each partition in `schema`'s `projector_offsets`.
pub async fn offsets(
    db: impl sqlx::PgExecutor<'_>,
    schema: &str,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
        "SELECT partition, next_offset FROM {}.projector_offsets",
        ident(schema)
    ))
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Takes the lock that pauses the live projector, in `tx` (a transaction
/// on the live schema), until it ends: a projector's batch locks its
/// offsets' rows first (`FOR UPDATE`, a ROW SHARE lock), which EXCLUSIVE
/// waits for and then keeps out; plain reads of the offsets (readers
/// waiting for a position, `/api/admin/projections`) go on. Waits at most
/// `lock_timeout` for the batch under way. Returns the live offsets, which
/// stay as they are until `tx` ends.
pub async fn lock_live(
    tx: &mut PgConnection,
    live: &str,
    lock_timeout: std::time::Duration,
) -> Result<BTreeMap<i32, i64>, sqlx::Error> {
    sqlx::query(&format!(
        "SET LOCAL lock_timeout = {}",
        lock_timeout.as_millis()
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "LOCK TABLE {}.projector_offsets IN EXCLUSIVE MODE",
        ident(live)
    ))
    .execute(&mut *tx)
    .await?;
    offsets(&mut *tx, live).await
}

async fn columns(
    db: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns
         WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(db)
    .await
}

async fn digest(db: &mut PgConnection, sql: &str) -> Result<Digest, sqlx::Error> {
    let (rows, sum): (i64, String) = sqlx::query_as(sql).fetch_one(db).await?;
    Ok(Digest { rows, sum })
}

/// One rebuilt table's digests, live and rebuilt.
#[derive(Debug, Clone)]
pub struct Compared {
    pub table: &'static str,
    pub live: Digest,
    pub rebuilt: Digest,
}

/// The digest of every rebuilt table in both schemas, read in `db` (a
/// transaction whose snapshot saw both at the same offsets).
pub async fn compare(
    db: &mut PgConnection,
    live: &str,
    new: &str,
) -> Result<Vec<Compared>, RebuildError> {
    let mut compared = Vec::new();
    for table in rebuilt_tables() {
        let live_columns = columns(db, live, table).await?;
        let new_columns = columns(db, new, table).await?;
        if live_columns != new_columns {
            return Err(RebuildError::Columns {
                table: table.to_owned(),
                live: live.to_owned(),
                live_columns,
                new_columns,
            });
        }
        let part = NOT_FROM_THE_LOG.iter().find(|n| n.table == table);
        let digested: Vec<String> = live_columns
            .into_iter()
            .filter(|c| part.is_none_or(|p| !p.columns.contains(&c.as_str())))
            .collect();
        let rows = part.and_then(|p| p.rows);
        compared.push(Compared {
            table,
            live: digest(db, &digest_sql(live, table, &digested, rows)).await?,
            rebuilt: digest(db, &digest_sql(new, table, &digested, rows)).await?,
        });
    }
    Ok(compared)
}

/// Makes the rebuilt schema the live one, in `tx` (the locked transaction
/// of [`lock_live`], committed by the caller): the kept tables move over
/// (with their sequences, indexes and rows), what is not from the log is
/// carried over, and the schemas trade names. Returns the kept tables.
pub async fn switch(
    tx: &mut PgConnection,
    live: &str,
    new: &str,
    old: &str,
) -> Result<Vec<String>, sqlx::Error> {
    let rebuilt = rebuilt_tables();
    let live_tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1",
    )
    .bind(live)
    .fetch_all(&mut *tx)
    .await?;
    let kept: Vec<String> = live_tables
        .into_iter()
        .filter(|t| !rebuilt.contains(&t.as_str()))
        .collect();
    for statement in carry_over(live, new) {
        sqlx::query(&statement).execute(&mut *tx).await?;
    }
    for table in &kept {
        sqlx::query(&format!(
            "DROP TABLE IF EXISTS {}.{}",
            ident(new),
            ident(table)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!(
            "ALTER TABLE {}.{} SET SCHEMA {}",
            ident(live),
            ident(table),
            ident(new)
        ))
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        ident(live),
        ident(old)
    ))
    .execute(&mut *tx)
    .await?;
    sqlx::query(&format!(
        "ALTER SCHEMA {} RENAME TO {}",
        ident(new),
        ident(live)
    ))
    .execute(&mut *tx)
    .await?;
    Ok(kept)
}

/// Drops a schema a rebuild made: an old one it kept, or a rebuild that did
/// not switch.
pub async fn drop_schema(db: &PgPool, schema: &str) -> Result<(), RebuildError> {
    let live = live_schema(db).await?;
    if !is_rebuild_schema(schema) || schema == live {
        return Err(RebuildError::NotARebuildSchema(schema.to_owned()));
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(db)
            .await?;
    if !exists {
        return Err(RebuildError::NotARebuildSchema(schema.to_owned()));
    }
    sqlx::query(&format!("DROP SCHEMA {} CASCADE", ident(schema)))
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projector_and_every_projection_are_rebuilt_and_nothing_else() {
        let tables = rebuilt_tables();
        for table in [
            "accounts",
            "account_details",
            "pending_registrations",
            "posts",
            "comments",
            "follows",
            "notifications",
            "media",
            "rooms",
            "room_messages",
            "projector_offsets",
            "projected_aggregates",
            "event_index",
        ] {
            assert!(tables.contains(&table), "{table} is not rebuilt");
        }
        for kept in [
            "credentials",
            "pending_credentials",
            "idempotency_keys",
            "decider_snapshots",
            "decider_commands",
            "mail_outbox",
            "notification_mails",
            "password_resets",
            "channels",
            "channel_outbox",
            "_sqlx_migrations",
        ] {
            assert!(!tables.contains(&kept), "{kept} would be rebuilt");
        }
        for part in NOT_FROM_THE_LOG {
            assert!(tables.contains(&part.table), "{}", part.table);
        }
    }

    #[test]
    fn a_digest_names_its_columns_quoted_and_its_rows() {
        let sql = digest_sql(
            "tidings_rebuild_1",
            "event_index",
            &["partition".into(), "offset".into()],
            None,
        );
        assert!(sql.contains("ROW(t.\"partition\", t.\"offset\")"), "{sql}");
        assert!(
            sql.contains("FROM \"tidings_rebuild_1\".\"event_index\" t"),
            "{sql}"
        );
        assert!(!sql.contains("WHERE"));
        let sql = digest_sql(
            "public",
            "media",
            &["id".into()],
            Some("deleted_at IS NULL"),
        );
        assert!(sql.ends_with(" WHERE deleted_at IS NULL"), "{sql}");
    }

    #[test]
    fn only_schemas_a_rebuild_made_may_be_dropped_by_it() {
        assert!(is_rebuild_schema("tidings_old_20261201t041500"));
        assert!(is_rebuild_schema("tidings_rebuild_20261201t041500"));
        assert!(!is_rebuild_schema("public"));
        assert!(!is_rebuild_schema("tidings_old_"));
        assert!(!is_rebuild_schema("tidings_old_x; DROP SCHEMA public"));
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    /// Against a real PostgreSQL: a database migrated as the live one, and a
    /// rebuild schema beside it.
    mod in_postgres {
        use super::super::*;
        use uuid::Uuid;

        const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
        const SCHEMA: &str = "tidings_rebuild_test";

        async fn database() -> (String, PgPool, PgPool) {
            let name = format!("tidings_test_{}", Uuid::new_v4().simple());
            let admin = crate::db::connect(ADMIN, 1)
                .await
                .expect("PostgreSQL is up");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
            let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            let live = crate::db::connect(&url, 2).await.unwrap();
            crate::db::migrate(&live).await.unwrap();
            create_schema(&live, SCHEMA).await.unwrap();
            let rebuild = crate::db::connect_in_schema(&url, SCHEMA, "rebuild", 1)
                .await
                .unwrap();
            migrate(&live, &rebuild, "public").await.unwrap();
            (name, live, rebuild)
        }

        async fn drop_database(name: &str, pools: [PgPool; 2]) {
            for pool in pools {
                pool.close().await;
            }
            let admin = crate::db::connect(ADMIN, 1).await.unwrap();
            sqlx::query(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
                .execute(&admin)
                .await
                .unwrap();
        }

        async fn follow(db: &PgPool, follower: u128, followee: u128) {
            sqlx::query("INSERT INTO follows VALUES ($1, $2, '2026-12-01T00:00:00Z')")
                .bind(Uuid::from_u128(follower))
                .bind(Uuid::from_u128(followee))
                .execute(db)
                .await
                .unwrap();
        }

        fn differing(compared: &[Compared]) -> Vec<&'static str> {
            compared
                .iter()
                .filter(|c| c.live != c.rebuilt)
                .map(|c| c.table)
                .collect()
        }

        #[tokio::test]
        async fn digests_ignore_row_order_and_see_one_changed_value_and_the_switch_keeps_the_kept_tables(
        ) {
            let (name, live, rebuild) = database().await;
            for (a, b) in [(1, 2), (2, 3), (3, 1)] {
                follow(&live, a, b).await;
            }
            for (a, b) in [(3, 1), (1, 2), (2, 3)] {
                follow(&rebuild, a, b).await;
            }
            // Not from the log: an account's cache version, a mailed mark.
            for (db, version) in [(&live, 7), (&rebuild, 3)] {
                sqlx::query(
                    "INSERT INTO accounts (id, username, email, display_name, created_at, updated_at, version)
                     VALUES ($1, 'ada', 'ada@example.com', 'Ada', '2026-12-01T00:00:00Z', '2026-12-01T00:00:00Z', $2)",
                )
                .bind(Uuid::from_u128(1))
                .bind(version)
                .execute(db)
                .await
                .unwrap();
            }
            sqlx::query("INSERT INTO credentials (user_id, password_hash) VALUES ($1, 'kept')")
                .bind(Uuid::from_u128(1))
                .execute(&live)
                .await
                .unwrap();
            let mut conn = live.acquire().await.unwrap();
            let compared = compare(&mut conn, "public", SCHEMA).await.unwrap();
            assert_eq!(differing(&compared), Vec::<&str>::new());
            let follows = compared.iter().find(|c| c.table == "follows").unwrap();
            assert_eq!(follows.live.rows, 3);

            sqlx::query("UPDATE follows SET created_at = created_at + interval '1 microsecond' WHERE follower_id = $1")
                .bind(Uuid::from_u128(2))
                .execute(&rebuild)
                .await
                .unwrap();
            let compared = compare(&mut conn, "public", SCHEMA).await.unwrap();
            assert_eq!(differing(&compared), ["follows"]);

            let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
            lock_live(&mut tx, "public", std::time::Duration::from_secs(1))
                .await
                .unwrap();
            let kept = switch(&mut tx, "public", SCHEMA, "tidings_old_test")
                .await
                .unwrap();
            tx.commit().await.unwrap();
            assert!(kept.contains(&"credentials".to_owned()));
            assert!(kept.contains(&"_sqlx_migrations".to_owned()));
            drop(conn);
            // A session of the live roles now reads the rebuilt rows, the
            // kept credentials and the live cache version.
            let hash: String = sqlx::query_scalar("SELECT password_hash FROM credentials")
                .fetch_one(&live)
                .await
                .unwrap();
            assert_eq!(hash, "kept");
            let version: i64 = sqlx::query_scalar("SELECT version FROM accounts")
                .fetch_one(&live)
                .await
                .unwrap();
            assert_eq!(version, 7);
            let moved: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM follows WHERE created_at > '2026-12-01T00:00:00Z'",
            )
            .fetch_one(&live)
            .await
            .unwrap();
            assert_eq!(moved, 1, "the rebuilt follows are live");
            assert!(drop_schema(&live, "public").await.is_err());
            drop_schema(&live, "tidings_old_test").await.unwrap();
            drop_database(&name, [live, rebuild]).await;
        }
    }
}
