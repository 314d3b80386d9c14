//! MariaDB access: one module per table, plus the bulk writes the flusher
//! uses ([`bulk`]). Every value is a bind parameter; SQL built at run time is
//! built with `QueryBuilder` and wrapped in `AssertSqlSafe` only there.

pub mod applications;
pub mod bulk;
pub mod chats;
pub mod listings;
pub mod messages;
pub mod numbering;
pub mod replicas;
pub mod search;

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions, MySqlPool};

/// Opens a pool on `url` without touching the network (connections are made
/// on first use), so the service starts even while MariaDB is down.
pub fn connect_lazy(url: &str, max_connections: u32) -> anyhow::Result<MySqlPool> {
    let opts: MySqlConnectOptions = url
        .parse::<MySqlConnectOptions>()
        .map_err(|e| anyhow::anyhow!("DATABASE_URL is invalid: {e}"))?
        .charset("utf8mb4")
        .log_statements(tracing::log::LevelFilter::Trace);
    Ok(MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(3))
        .connect_lazy_with(opts))
}

/// Creates the database named in `url` if it does not exist (used by
/// `migrate`, `serve` and the tests), connecting to the server without it.
pub async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let opts: MySqlConnectOptions = url.parse()?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        anyhow::bail!("DATABASE_URL names no database");
    };
    let mut conn = opts.database("").connect().await?;
    let sql = format!(
        "CREATE DATABASE IF NOT EXISTS `{}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        name.replace('`', "``")
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    Ok(())
}

/// Applies the migrations in `migrations/` (embedded at compile time).
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

/// Whether `err` means MariaDB could not be reached or the pool ran dry (a
/// passing condition: retry), as opposed to an error in the statement or data.
/// Error numbers counted as passing: 1040 too many connections, 1053 server
/// shutdown, 1205 lock wait timeout, 1213 deadlock, 1927 connection killed,
/// 2006/2013 server gone or connection lost.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Protocol(_)
    ) || matches!(
        error_number(err),
        Some(1040 | 1053 | 1205 | 1213 | 1927 | 2006 | 2013)
    )
}

/// MariaDB error number of a database error, if it is one.
pub fn error_number(err: &sqlx::Error) -> Option<u16> {
    match err {
        sqlx::Error::Database(e) => e
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Pushes `((…chat_id = ? AND …number BETWEEN ? AND ?) OR …)` over `keys`
/// (`(chat_id, number)`): one disjunct per run of consecutive numbers of a
/// chat, with the columns qualified by `alias` (for example `"m."`, or
/// `""`). A flushed batch holds runs of each chat's numbers, so this is a
/// few disjuncts per chat. One disjunct per key made MariaDB spend about
/// 0.5 s per 1,000 keys planning the prepared statement. `keys` must not be
/// empty.
pub(crate) fn push_chat_numbers(
    qb: &mut sqlx::QueryBuilder<sqlx::MySql>,
    alias: &str,
    keys: &[(u64, i64)],
) {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u64, i64, i64)> = Vec::new();
    for (chat_id, number) in sorted {
        match runs.last_mut() {
            Some((c, _, last)) if *c == chat_id && *last + 1 == number => *last = number,
            _ => runs.push((chat_id, number, number)),
        }
    }
    qb.push("(");
    for (i, (chat_id, first, last)) in runs.into_iter().enumerate() {
        if i > 0 {
            qb.push(" OR ");
        }
        qb.push(format!("({alias}chat_id = "))
            .push_bind(chat_id)
            .push(format!(" AND {alias}number BETWEEN "))
            .push_bind(first)
            .push(" AND ")
            .push_bind(last)
            .push(")");
    }
    qb.push(")");
}
