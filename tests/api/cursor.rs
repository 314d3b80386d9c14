//! Cursor pagination of chats and messages (`after`/`limit`, issue 35):
//! `meta.next_after`, the `Link` header (RFC 8288), `page`/`per_page` kept,
//! and a walk that neither repeats nor skips an item while others are
//! created and deleted.

use std::collections::BTreeSet;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// GETs `path` (from `/api/v1`); returns the body and the `Link` header.
async fn page(app: &TestApp, path: &str) -> (Value, Option<String>) {
    let r = app.get(path).await;
    assert_eq!(r.status(), 200, "{path}");
    let link = r
        .headers()
        .get("link")
        .map(|v| v.to_str().unwrap().to_string());
    (r.json().await.unwrap(), link)
}

/// The numbers of a page of `field` (`messages` or `chats`).
fn numbers(body: &Value, field: &str) -> Vec<i64> {
    body[field]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn messages_are_walked_by_cursor_with_next_after_and_a_link() {
    let app = spawn_app().await;
    let t = app.create_app("cursor").await;
    let c = app.create_chat(&t).await;
    for i in 1..=45 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    app.flush().await;
    let base = format!("/applications/{t}/chats/{c}/messages");

    let (first, link) = page(&app, &format!("{base}?after=0&limit=20")).await;
    assert_eq!(numbers(&first, "messages"), (1..=20).collect::<Vec<_>>());
    assert_eq!(first["meta"]["next_after"], 20);
    assert_eq!(first["meta"]["per_page"], 20);
    assert!(first["meta"]["page"].is_null(), "{first}");
    let link = link.expect("a Link header on a page with more after it");
    assert_eq!(
        link,
        format!("</api/v1{base}?after=20&limit=20>; rel=\"next\"")
    );
    // The link is followed as given.
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let r = app
        .client
        .get(format!("{}{next}", app.address))
        .send()
        .await
        .unwrap();
    let second: Value = r.json().await.unwrap();
    assert_eq!(numbers(&second, "messages"), (21..=40).collect::<Vec<_>>());
    assert_eq!(second["meta"]["next_after"], 40);

    let (last, link) = page(&app, &format!("{base}?after=40&limit=20")).await;
    assert_eq!(numbers(&last, "messages"), (41..=45).collect::<Vec<_>>());
    assert!(last["meta"]["next_after"].is_null(), "{last}");
    assert_eq!(link, None, "no Link on the last page");

    // A cursor past the end, or between numbers, is fine.
    let (empty, _) = page(&app, &format!("{base}?after=1000")).await;
    assert_eq!(numbers(&empty, "messages"), Vec::<i64>::new());
    // `limit` alone starts at the first.
    let (start, _) = page(&app, &format!("{base}?limit=3")).await;
    assert_eq!(numbers(&start, "messages"), vec![1, 2, 3]);
    // With both kinds, the cursor wins: `page` is ignored, `per_page`
    // sizes the page unless `limit` does.
    let (both, _) = page(&app, &format!("{base}?page=2&per_page=4&after=10")).await;
    assert_eq!(numbers(&both, "messages"), vec![11, 12, 13, 14]);
    let (both, _) = page(&app, &format!("{base}?page=2&per_page=4&after=10&limit=2")).await;
    assert_eq!(numbers(&both, "messages"), vec![11, 12]);

    // Pages by number keep working, and give the cursor of the next page.
    let (p2, link) = page(&app, &format!("{base}?page=2&per_page=20")).await;
    assert_eq!(numbers(&p2, "messages"), (21..=40).collect::<Vec<_>>());
    assert_eq!(
        (p2["meta"]["page"].clone(), p2["meta"]["next_page"].clone()),
        (json!(2), json!(3))
    );
    assert_eq!(p2["meta"]["next_after"], 40);
    assert_eq!(
        link.as_deref(),
        Some(format!("</api/v1{base}?page=3&per_page=20>; rel=\"next\"").as_str())
    );
}

#[tokio::test]
async fn chats_are_walked_by_cursor() {
    let app = spawn_app().await;
    let t = app.create_app("chat cursor").await;
    for _ in 0..5 {
        app.create_chat(&t).await;
    }
    app.flush().await;
    let (body, link) = page(&app, &format!("/applications/{t}/chats?after=2&limit=2")).await;
    assert_eq!(numbers(&body, "chats"), vec![3, 4]);
    assert_eq!(body["meta"]["next_after"], 4);
    assert_eq!(
        link.as_deref(),
        Some(format!("</api/v1/applications/{t}/chats?after=4&limit=2>; rel=\"next\"").as_str())
    );
    let (body, link) = page(&app, &format!("/applications/{t}/chats?after=4&limit=2")).await;
    assert_eq!(numbers(&body, "chats"), vec![5]);
    assert!(body["meta"]["next_after"].is_null());
    assert_eq!(link, None);
}

#[tokio::test]
async fn a_cursor_out_of_range_is_refused() {
    let app = spawn_app().await;
    let t = app.create_app("bad cursor").await;
    let c = app.create_chat(&t).await;
    for q in [
        "after=-1",
        "limit=0",
        "limit=101",
        "after=abc",
        "after=99999999999999999999",
    ] {
        for path in [
            format!("/applications/{t}/chats?{q}"),
            format!("/applications/{t}/chats/{c}/messages?{q}"),
        ] {
            let r = app.get(&path).await;
            assert_eq!(r.status(), 422, "{path}");
            assert!(r.json::<Value>().await.unwrap()["error"].is_string());
        }
    }
}

/// A walk by cursor over 10,000 messages while others are created and
/// deleted: no number twice, and every message stored before the walk and
/// not deleted during it is seen. (By `OFFSET`, each delete behind the
/// walk would shift a message past it unseen.)
#[tokio::test]
async fn a_walk_by_cursor_neither_repeats_nor_skips_while_the_chat_changes() {
    let app = spawn_app().await;
    let t = app.create_app("walk").await;
    let c = app.create_chat(&t).await;
    let path = format!("/applications/{t}/chats/{c}/messages");
    futures::stream::iter(1..=10_000)
        .map(|i| {
            let (app, path) = (&app, &path);
            async move {
                let r = app.post(path, json!({ "body": format!("m{i}") })).await;
                assert_eq!(r.status(), 201);
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    app.flush().await;

    let stop = std::sync::atomic::AtomicBool::new(false);
    let deleted = std::sync::Mutex::new(BTreeSet::new());
    let churn = async {
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            n += 1;
            // Deletes spread over the whole chat, behind and ahead of the walk.
            let victim = (n * 7_919) % 10_000 + 1;
            let r = app.delete(&format!("{path}/{victim}")).await;
            if r.status() == 204 {
                deleted.lock().unwrap().insert(victim as i64);
            }
            let r = app.post(&path, json!({ "body": format!("new {n}") })).await;
            assert_eq!(r.status(), 201);
            if n.is_multiple_of(20) {
                app.flush().await;
            }
        }
    };
    let walk = async {
        let mut seen = Vec::new();
        let mut after = 0;
        loop {
            let (body, _) = page(&app, &format!("{path}?after={after}&limit=100")).await;
            seen.extend(numbers(&body, "messages"));
            match body["meta"]["next_after"].as_i64() {
                Some(next) => after = next,
                None => break,
            }
            tokio::task::yield_now().await;
        }
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        seen
    };
    let (seen, ()) = tokio::join!(walk, churn);
    let deleted = deleted.into_inner().unwrap();
    assert!(
        deleted.len() > 10,
        "the chat changed during the walk: {}",
        deleted.len()
    );
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "numbers in order, none twice"
    );
    let seen: BTreeSet<i64> = seen.into_iter().collect();
    let missed: Vec<i64> = (1..=10_000)
        .filter(|n| !deleted.contains(n) && !seen.contains(n))
        .collect();
    assert!(missed.is_empty(), "skipped on the walk: {missed:?}");
}
