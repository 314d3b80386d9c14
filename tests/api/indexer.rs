//! The search indexer's leases, against a Meilisearch stand-in in the
//! test's own process (no server needed): a batch of index ops slower than
//! its lease is applied once, not again and again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use poem::web::{Data, Json, Path};
use poem::{EndpointExt, Route, handler};
use serde_json::{Value, json};

use crate::helpers::spawn_app_with;

/// What the stand-in saw: how many times each document id was sent.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// A task in the form Meilisearch answers (every one succeeded at once).
fn task(uid: u32, succeeded: bool) -> Value {
    let at = "2026-12-03T00:00:00Z";
    let mut t = json!({
        "indexUid": "messages", "type": "customs", "enqueuedAt": at,
    });
    if succeeded {
        t["uid"] = json!(uid);
        t["status"] = json!("succeeded");
        t["duration"] = json!("PT0.001S");
        t["startedAt"] = json!(at);
        t["finishedAt"] = json!(at);
        t["canceledBy"] = Value::Null;
        t["error"] = Value::Null;
    } else {
        t["taskUid"] = json!(uid);
        t["status"] = json!("enqueued");
    }
    t
}

#[handler]
async fn tasks(Path(uid): Path<u32>) -> Json<Value> {
    Json(task(uid, true))
}

/// Documents added: counted, then answered after the stand-in's delay.
#[handler]
async fn documents(
    seen: Data<&Seen>,
    delay: Data<&Duration>,
    Json(docs): Json<Vec<Value>>,
) -> poem::Response {
    tokio::time::sleep(*delay.0).await;
    {
        let mut seen = seen.lock().unwrap();
        for d in &docs {
            *seen
                .entry(d["id"].as_str().unwrap_or_default().to_string())
                .or_default() += 1;
        }
    }
    poem::Response::builder()
        .status(poem::http::StatusCode::ACCEPTED)
        .content_type("application/json")
        .body(task(1, false).to_string())
}

/// Any other write (index creation, settings, deletions): a task.
#[handler]
async fn other() -> poem::Response {
    poem::Response::builder()
        .status(poem::http::StatusCode::ACCEPTED)
        .content_type("application/json")
        .body(task(2, false).to_string())
}

/// Starts the stand-in on a free loopback port; its URL.
async fn slow_meili(delay: Duration, seen: Seen) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let routes = Route::new()
        .at("/tasks/:uid", poem::get(tasks))
        .at("/indexes/:index/documents", poem::post(documents))
        .at("/*rest", other)
        .data(seen)
        .data(delay);
    tokio::spawn(poem::Server::new(poem::listener::TcpListener::bind(addr)).run(routes));
    let url = format!("http://{addr}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{url}/tasks/1")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_batch_slower_than_its_lease_is_applied_once() {
    // Each document write takes 1 s; the lease is 3 s, and the flusher's
    // recovery runs every 3 s; eight ops (one per flushed batch) in one
    // index batch take about 8 s, so an unrenewed lease is surely recovered
    // mid-batch and the batch applied again.
    let seen = Seen::default();
    let url = slow_meili(Duration::from_millis(1000), seen.clone()).await;
    let app = spawn_app_with(|c| {
        c.meili_url = Some(url);
        c.lease = Duration::from_secs(3);
    })
    .await;
    let token = app.create_app("slow index").await;
    let chat = app.create_chat(&token).await;
    for round in 0..8 {
        for i in 0..2 {
            app.create_message(&token, chat, &format!("r{round} m{i}"))
                .await;
        }
        app.flush().await;
    }
    let drained = app
        .eventually(Duration::from_secs(60), || async {
            seen.lock().unwrap().len() == 16
                && app
                    .buffer
                    .inspect()
                    .await
                    .unwrap()
                    .iter()
                    .all(|q| q.pending == 0 && q.batches.is_empty())
        })
        .await;
    assert!(
        drained,
        "every message was indexed and the queue drained: {seen:?}"
    );
    // Long enough for an expired lease to be recovered and applied again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 16, "{seen:?}");
    assert!(
        seen.values().all(|n| *n == 1),
        "each document was sent once, not again after its lease ran out: {seen:?}"
    );
}
