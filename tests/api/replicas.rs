//! Reads on a MariaDB GTID replica (`DATABASE_READ_URLS`, issue 26):
//! read-your-writes across the replica's lag, and reads that stay correct
//! when the replica stops applying.
//!
//! The replica is made to lag on purpose: a session on it holds `LOCK
//! TABLES messages READ`, which stops its SQL thread from applying a write
//! to `messages` (reads still run), and lets go after a moment. A read that
//! did not wait for the write's GTID would show the row as it was.
//!
//! Needs a primary with a binary log and its replica: `scripts/test` starts
//! the pair of `scripts/replication` and sets `TEST_PRIMARY_URL` and
//! `TEST_REPLICA_URL`; without them these tests print SKIPPED and pass. The
//! test that stops the SQL thread starts a pair of its own.

use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, MySqlConnection};

use crate::helpers::{TestApp, metric_sum, spawn_app_with};

/// `(primary, replica)` server URLs, or `None` (and SKIPPED printed).
fn replication(test: &str) -> Option<(String, String)> {
    match (
        std::env::var("TEST_PRIMARY_URL"),
        std::env::var("TEST_REPLICA_URL"),
    ) {
        (Ok(p), Ok(r)) => Some((p, r)),
        _ => {
            eprintln!(
                "SKIPPED {test}: TEST_PRIMARY_URL and TEST_REPLICA_URL are not set (scripts/test starts scripts/replication and sets them)"
            );
            None
        }
    }
}

/// The service with its database on `primary` and reads on `replica`, the
/// causal wait long enough that a read waits for the replica rather than
/// falling back.
async fn spawn_with_replica(primary: &str, replica: &str, wait_ms: u64) -> TestApp {
    spawn_app_with(|c| {
        let db = c.database_url.rsplit('/').next().unwrap().to_string();
        c.database_url = format!("{primary}/{db}");
        c.database_read_urls = vec![format!("{replica}/{db}")];
        c.read_replica_wait_ms = wait_ms;
        // A loaded machine's replica may lag seconds; these tests are about
        // the wait, not the rotation (a stopped SQL thread leaves it anyway).
        c.read_replica_max_lag_secs = 120;
    })
    .await
}

/// The database name of `app`.
fn db_of(app: &TestApp) -> String {
    app.config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_string()
}

/// Waits until the replica has the database and tables of `app` and is in
/// rotation.
async fn replica_has_schema(app: &TestApp, replica: &str) {
    let url = format!("{replica}/{}", db_of(app));
    assert!(
        app.eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                let Ok(mut c) = MySqlConnection::connect(&url).await else {
                    return false;
                };
                sqlx::query("SELECT 1 FROM messages LIMIT 1")
                    .fetch_optional(&mut c)
                    .await
                    .is_ok()
            }
        })
        .await,
        "the replica never had the schema"
    );
    // Startup's first check may find the replica behind the database just
    // made; a read before the next check (every second) would go to the
    // primary as `no_replica`.
    assert!(
        app.eventually(Duration::from_secs(20), || async {
            metric_sum(&app.metrics_text().await, "chat_read_replica_in_rotation") == 1.0
        })
        .await,
        "the replica never came into rotation"
    );
}

/// Holds `LOCK TABLES messages READ` on the replica's copy of `app`'s
/// database for `hold`, in a task: the replica applies no write to
/// `messages` meanwhile. Returns once the lock is held.
async fn stall_replica(
    app: &TestApp,
    replica: &str,
    hold: Duration,
) -> tokio::task::JoinHandle<()> {
    let mut c = MySqlConnection::connect(&format!("{replica}/{}", db_of(app)))
        .await
        .unwrap();
    // LOCK TABLES cannot be prepared: the text protocol.
    sqlx::raw_sql("LOCK TABLES messages READ")
        .execute(&mut c)
        .await
        .unwrap();
    tokio::spawn(async move {
        tokio::time::sleep(hold).await;
        sqlx::raw_sql("UNLOCK TABLES")
            .execute(&mut c)
            .await
            .unwrap();
    })
}

#[tokio::test]
async fn a_flushed_record_is_read_at_once_from_a_lagging_replica() {
    let Some((primary, replica)) = replication("a_flushed_record_is_read_at_once") else {
        return;
    };
    let app = spawn_with_replica(&primary, &replica, 10_000).await;
    replica_has_schema(&app, &replica).await;
    let token = app.create_app("replicated").await;
    let chat = app.create_chat(&token).await;
    app.flush().await;
    for i in 1..=5 {
        app.create_message(&token, chat, &format!("hello {i}"))
            .await;
    }
    let unlock = stall_replica(&app, &replica, Duration::from_millis(700)).await;
    app.flush().await;
    let started = Instant::now();
    let list = app
        .get_json(&format!("/applications/{token}/chats/{chat}/messages"))
        .await;
    let waited = started.elapsed();
    let bodies: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        ["hello 1", "hello 2", "hello 3", "hello 4", "hello 5"],
        "the list read right after the flush (after {waited:?})"
    );
    unlock.await.unwrap();
    let metrics = app.metrics_text().await;
    assert!(
        metric_sum(&metrics, "chat_read_replica_waits_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "chat_read_replica_reads_total") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "chat_read_primary_fallbacks_total"),
        0.0,
        "every read was served by the replica: {metrics}"
    );

    // Once a check (every second) has seen the replica apply the flush, a
    // read of the same scope skips the wait.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let waits = metric_sum(&metrics, "chat_read_replica_waits_total");
    let reads = metric_sum(&metrics, "chat_read_replica_reads_total");
    app.get_json(&format!("/applications/{token}/chats/{chat}/messages"))
        .await;
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "chat_read_replica_waits_total"),
        waits,
        "{metrics}"
    );
    assert!(
        metric_sum(&metrics, "chat_read_replica_reads_total") > reads,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_edit_and_a_delete_are_read_at_once_from_a_lagging_replica() {
    let Some((primary, replica)) = replication("an_edit_and_a_delete_are_read_at_once") else {
        return;
    };
    let app = spawn_with_replica(&primary, &replica, 10_000).await;
    replica_has_schema(&app, &replica).await;
    let token = app.create_app("replicated").await;
    let chat = app.create_chat(&token).await;
    let first = app.create_message(&token, chat, "before").await;
    let second = app.create_message(&token, chat, "doomed").await;
    app.flush().await;
    let path = |n: i64| format!("/applications/{token}/chats/{chat}/messages/{n}");
    // The replica has both before it is stalled.
    assert!(
        app.eventually(Duration::from_secs(10), || async {
            app.get(&path(second)).await.status() == 200
        })
        .await
    );

    let unlock = stall_replica(&app, &replica, Duration::from_millis(700)).await;
    let r = app.put(&path(first), json!({"body": "after"})).await;
    assert_eq!(r.status(), 200);
    let read = app.get_json(&path(first)).await;
    assert_eq!(read["body"], "after", "the edit, read right after it");
    unlock.await.unwrap();

    let unlock = stall_replica(&app, &replica, Duration::from_millis(700)).await;
    assert_eq!(app.delete(&path(second)).await.status(), 204);
    let r = app.get(&path(second)).await;
    assert_eq!(r.status(), 404, "the delete, read right after it");
    let list = app
        .get_json(&format!("/applications/{token}/chats/{chat}/messages"))
        .await;
    assert_eq!(list["messages"].as_array().unwrap().len(), 1, "{list}");
    unlock.await.unwrap();
    // The read after the edit and the one after the delete waited (later reads
    // may find the write applied at the last check and skip the wait).
    let metrics = app.metrics_text().await;
    assert!(
        metric_sum(&metrics, "chat_read_replica_waits_total") >= 2.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "chat_read_primary_fallbacks_total"),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn without_a_write_to_wait_for_a_read_goes_to_the_replica_at_once() {
    let Some((primary, replica)) = replication("without_a_write_to_wait_for") else {
        return;
    };
    let app = spawn_with_replica(&primary, &replica, 10_000).await;
    replica_has_schema(&app, &replica).await;
    let token = app.create_app("replicated").await;
    let r = app.get(&format!("/applications/{token}/chats")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let metrics = app.metrics_text().await;
    assert_eq!(
        metric_sum(&metrics, "chat_read_replica_waits_total"),
        0.0,
        "{metrics}"
    );
    assert_eq!(
        metric_sum(&metrics, "chat_read_replica_reads_total"),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn with_the_replicas_sql_thread_stopped_or_the_replica_killed_reads_stay_right() {
    if replication("with_the_replicas_sql_thread_stopped").is_none() {
        return;
    }
    let pair = crate::support::ReplicationPair::start();
    let app = spawn_with_replica(&pair.primary, &pair.replica, 200).await;
    replica_has_schema(&app, &pair.replica).await;
    let in_rotation = |want: f64| {
        let app = &app;
        async move {
            app.eventually(Duration::from_secs(10), || async {
                metric_sum(&app.metrics_text().await, "chat_read_replica_in_rotation") == want
            })
            .await
        }
    };
    assert!(
        in_rotation(1.0).await,
        "the replica is in rotation at first"
    );
    let token = app.create_app("replicated").await;
    let chat = app.create_chat(&token).await;
    app.flush().await;

    let mut admin = MySqlConnection::connect(&pair.replica).await.unwrap();
    sqlx::raw_sql("STOP SLAVE SQL_THREAD")
        .execute(&mut admin)
        .await
        .unwrap();
    // Writes and reads go on meanwhile: creates, flushes, edits, reads.
    let mut numbers = Vec::new();
    for round in 0..5 {
        // 20 concurrent creates a round.
        let bodies: Vec<String> = (0..20).map(|i| format!("r{round} m{i}")).collect();
        let mut created =
            futures::future::join_all(bodies.iter().map(|b| app.create_message(&token, chat, b)))
                .await;
        created.sort_unstable();
        numbers.extend(created);
        app.flush().await;
        let edited = numbers[round * 20];
        let path = format!("/applications/{token}/chats/{chat}/messages/{edited}");
        assert_eq!(
            app.put(&path, json!({"body": format!("edited {round}")}))
                .await
                .status(),
            200
        );
        assert_eq!(app.get_json(&path).await["body"], format!("edited {round}"));
        let list = app
            .get_json(&format!(
                "/applications/{token}/chats/{chat}/messages?per_page=100"
            ))
            .await;
        assert_eq!(
            list["messages"].as_array().unwrap().len(),
            numbers.len(),
            "round {round}"
        );
    }
    assert!(
        in_rotation(0.0).await,
        "a replica that does not apply leaves the rotation"
    );
    let ready = app
        .client
        .get(format!("{}/health/ready", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "ready while the primary is up");
    let metrics = app.metrics_text().await;
    assert!(
        metric_sum(&metrics, "chat_read_primary_fallbacks_total") >= 1.0,
        "reads went to the primary: {metrics}"
    );
    // Nothing lost: every acknowledged message is stored, once.
    assert_eq!(app.count("messages").await, numbers.len() as i64);

    sqlx::raw_sql("START SLAVE SQL_THREAD")
        .execute(&mut admin)
        .await
        .unwrap();
    assert!(
        in_rotation(1.0).await,
        "the replica is put back once it applies again"
    );
    let before = metric_sum(&app.metrics_text().await, "chat_read_replica_reads_total");
    let list = app
        .get_json(&format!(
            "/applications/{token}/chats/{chat}/messages?per_page=100"
        ))
        .await;
    assert_eq!(list["messages"].as_array().unwrap().len(), numbers.len());
    assert!(metric_sum(&app.metrics_text().await, "chat_read_replica_reads_total") > before);

    // The replica dies between two checks: reads go on, from the primary.
    drop(admin);
    let killed = std::process::Command::new("kill")
        .args(["-9", &pair.pid("replica").to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let fallbacks = metric_sum(
        &app.metrics_text().await,
        "chat_read_primary_fallbacks_total",
    );
    // A scope with no recent write (no wait): the read itself fails on the
    // replica, and is run again on the primary.
    let quiet = app.create_app("quiet").await;
    let r = app.get(&format!("/applications/{quiet}/chats")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for _ in 0..5 {
        let list = app
            .get_json(&format!(
                "/applications/{token}/chats/{chat}/messages?per_page=100"
            ))
            .await;
        assert_eq!(list["messages"].as_array().unwrap().len(), numbers.len());
    }
    assert!(
        metric_sum(
            &app.metrics_text().await,
            "chat_read_primary_fallbacks_total"
        ) > fallbacks,
        "the reads the dead replica could not serve went to the primary"
    );
    assert!(
        in_rotation(0.0).await,
        "a replica that does not answer leaves the rotation"
    );
    drop(app);
    drop(pair);
}

/// `Seconds_Behind_Master` and `Slave_IO_Running` of the replica at `url`.
async fn replica_io(url: &str) -> (Option<u64>, String) {
    use sqlx::Row;
    let mut c = MySqlConnection::connect(url).await.unwrap();
    let row = sqlx::query("SHOW SLAVE STATUS")
        .fetch_one(&mut c)
        .await
        .unwrap();
    (
        row.try_get::<Option<u64>, _>("Seconds_Behind_Master")
            .unwrap(),
        row.try_get::<String, _>("Slave_IO_Running").unwrap(),
    )
}

/// Issue 39, point 8 (O7): the replica's link to the primary goes
/// half-open (a proxy between them freezes): its IO thread waits for bytes
/// that do not come (up to `slave_net_timeout`, 60 s), its SQL thread has
/// applied everything it received, and `Seconds_Behind_Master` reads 0
/// throughout. An edit made on the primary is then never applied there.
/// The replica must leave the rotation within `READ_REPLICA_MAX_LAG_SECS`
/// plus a check or two, judged by GTID positions; and no read of the
/// edited message, for longer than its read-your-writes mark lives (max
/// lag + 10 s), may show the old body. Before the fix the replica stayed
/// in rotation, and once the mark expired reads were served stale.
#[tokio::test]
async fn a_replica_on_a_half_open_link_leaves_the_rotation_by_its_gtid_position() {
    if replication("a_replica_on_a_half_open_link").is_none() {
        return;
    }
    let max_lag_secs = 1;
    let pair = crate::support::ReplicationPair::start();
    let primary_port: u16 = pair.primary.rsplit(':').next().unwrap().parse().unwrap();
    let proxy = crate::support::Proxy::start(([127, 0, 0, 1], primary_port).into()).await;
    let mut admin = MySqlConnection::connect(&pair.replica).await.unwrap();
    // A port number only: nothing to escape.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "STOP SLAVE; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}; START SLAVE",
        proxy.addr.port()
    )))
    .execute(&mut admin)
    .await
    .unwrap();
    let app = spawn_app_with(|c| {
        let db = c.database_url.rsplit('/').next().unwrap().to_string();
        c.database_url = format!("{}/{db}", pair.primary);
        c.database_read_urls = vec![format!("{}/{db}", pair.replica)];
        c.read_replica_wait_ms = 200;
        c.read_replica_max_lag_secs = max_lag_secs;
    })
    .await;
    replica_has_schema(&app, &pair.replica).await;
    // This replica's gauges only (the recorder is the process's, shared
    // with the other tests under `cargo test`).
    let label = format!(
        "{{replica=\"{}\"}} ",
        pair.replica.rsplit('@').next().unwrap()
    );
    let gauge = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(label.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(f64::NAN)
    };
    let in_rotation =
        || async { gauge(&app.metrics_text().await, "chat_read_replica_in_rotation") == 1.0 };
    assert!(
        app.eventually(Duration::from_secs(20), in_rotation).await,
        "the replica is in rotation at first"
    );
    let token = app.create_app("half-open").await;
    let chat = app.create_chat(&token).await;
    let n = app.create_message(&token, chat, "before").await;
    app.flush().await;
    let path = format!("/applications/{token}/chats/{chat}/messages/{n}");
    let replica_db = format!("{}/{}", pair.replica, db_of(&app));
    assert!(
        app.eventually(Duration::from_secs(20), || async {
            let Ok(mut c) = MySqlConnection::connect(&replica_db).await else {
                return false;
            };
            sqlx::query("SELECT 1 FROM messages WHERE body = 'before'")
                .fetch_optional(&mut c)
                .await
                .is_ok_and(|r| r.is_some())
        })
        .await,
        "the replica has the message"
    );
    assert!(
        app.eventually(Duration::from_secs(20), in_rotation).await,
        "the replica is in rotation before the link freezes"
    );

    proxy.freeze();
    let frozen_at = Instant::now();
    let r = app.put(&path, json!({"body": "after"})).await;
    assert_eq!(r.status(), 200);
    let mark_ttl = chat_api::store::replicas::mark_ttl(max_lag_secs);
    let mut stale = Vec::new();
    let mut left_after = None;
    while frozen_at.elapsed() < mark_ttl + Duration::from_secs(3) {
        let body = app.get_json(&path).await["body"].clone();
        if body != "after" {
            stale.push((frozen_at.elapsed(), body));
        }
        if left_after.is_none() && !in_rotation().await {
            left_after = Some(frozen_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The scenario held: the IO thread still "runs" and the replica reports
    // no lag, though it never got the edit.
    let (behind, io) = replica_io(&pair.replica).await;
    assert_eq!(
        (behind, io.as_str()),
        (Some(0), "Yes"),
        "Seconds_Behind_Master reads 0 on the half-open link"
    );
    assert!(
        stale.is_empty(),
        "reads of an edit served stale while the link was frozen: {stale:?}"
    );
    let bound = Duration::from_secs(max_lag_secs) + 2 * chat_api::store::replicas::CHECK_INTERVAL;
    match left_after {
        Some(after) => assert!(
            after <= bound + Duration::from_millis(500),
            "left the rotation {after:?} after the write (bound {bound:?})"
        ),
        None => panic!("the replica stayed in rotation for {mark_ttl:?} and more"),
    }
    eprintln!(
        "the replica left the rotation {left_after:?} after the write (bound {bound:?}); stale reads: 0"
    );
    let lag = gauge(&app.metrics_text().await, "chat_read_replica_lag_seconds");
    assert!(
        lag >= max_lag_secs as f64,
        "the lag gauge shows the GTID lag: {lag}"
    );

    proxy.thaw();
    assert!(
        app.eventually(Duration::from_secs(20), in_rotation).await,
        "the replica is put back once it applied the edit"
    );
    assert_eq!(app.get_json(&path).await["body"], "after");
    drop(app);
    drop(proxy);
    drop(pair);
}
