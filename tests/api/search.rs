//! Message search: the term index in MariaDB (the default backend) always;
//! the Meilisearch backend where `MEILI_URL` points at a server.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

pub(crate) async fn search(app: &TestApp, token: &str, chat: i64, q: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!(
            "/applications/{token}/chats/{chat}/messages/search"
        )))
        .query(&[("q", q)])
        .send()
        .await
        .unwrap()
}

async fn numbers(app: &TestApp, token: &str, chat: i64, q: &str) -> Vec<i64> {
    let r = search(app, token, chat, q).await;
    assert_eq!(r.status(), 200, "search {q:?}");
    let body: Value = r.json().await.unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_i64().unwrap())
        .collect()
}

/// `(number, score)` of each hit, in the order returned.
async fn scored(app: &TestApp, token: &str, chat: i64, q: &str) -> Vec<(i64, f64)> {
    let r = search(app, token, chat, q).await;
    assert_eq!(r.status(), 200, "search {q:?}");
    let body: Value = r.json().await.unwrap();
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let score = m["score"].as_f64();
            assert!(score.is_some(), "every hit has a numeric score: {m}");
            (m["number"].as_i64().unwrap(), score.unwrap())
        })
        .collect()
}

/// Asserts the hits are ordered from the best score to the worst.
fn assert_best_first(hits: &[(i64, f64)]) {
    assert!(
        hits.windows(2).all(|w| w[0].1 >= w[1].1),
        "scores best first: {hits:?}"
    );
}

#[tokio::test]
async fn database_search_scores_hits_best_first() {
    let app = spawn_app().await;
    let t = app.create_app("scores").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "one apple").await;
    app.create_message(&t, c, "apple apple apple, apple pie and apple juice")
        .await;
    app.create_message(&t, c, "no fruit here").await;
    app.create_message(&t, c, "apple apple").await;
    for i in 0..6 {
        // Rows without the word, so that "apple" is rare enough to weigh.
        app.create_message(&t, c, &format!("filler message number {i}"))
            .await;
    }
    app.flush().await;
    let hits = scored(&app, &t, c, "apple").await;
    println!("term index (number, score) for \"apple\": {hits:?}");
    let mut first_two: Vec<i64> = hits[..2].iter().map(|h| h.0).collect();
    first_two.sort();
    assert_eq!(first_two, [2, 4], "more occurrences rank higher: {hits:?}");
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(
        hits[2].0, 1,
        "one occurrence in a longer body last: {hits:?}"
    );
    assert_best_first(&hits);
    assert!(
        hits.iter().all(|h| h.1 > 0.0 && h.1 < 1.0),
        "scores are in (0, 1): {hits:?}"
    );
    assert!(hits[0].1 > hits[2].1, "{hits:?}");
    // Both words beat one of them.
    let both = scored(&app, &t, c, "apple juice").await;
    assert_eq!(both[0].0, 2, "{both:?}");
}

#[tokio::test]
async fn database_scores_are_comparable_across_chats() {
    let app = spawn_app().await;
    let t = app.create_app("scales").await;
    let small = app.create_chat(&t).await;
    let large = app.create_chat(&t).await;
    app.create_message(&t, small, "hello there").await;
    app.create_message(&t, large, "hello there").await;
    for i in 0..40 {
        app.create_message(&t, large, &format!("something else entirely {i}"))
            .await;
    }
    app.flush().await;
    let one = scored(&app, &t, small, "hello").await;
    let many = scored(&app, &t, large, "hello").await;
    println!("one-message chat: {one:?}; 41-message chat: {many:?}");
    assert_eq!(one.len(), 1);
    assert_eq!(many.len(), 1);
    // Not InnoDB's 1.9e-9: the same match scores the same share of the best
    // possible one, whatever the chat holds (up to length normalization).
    assert!(one[0].1 > 0.3 && one[0].1 < 1.0, "{one:?}");
    assert!(many[0].1 > 0.3 && many[0].1 < 1.0, "{many:?}");
}

#[tokio::test]
async fn database_search_ranks_relevant_messages_first_and_never_crosses_chats() {
    let app = spawn_app().await;
    let a = app.create_app("a").await;
    let b = app.create_app("b").await;
    for _ in 0..2 {
        app.create_chat(&a).await;
    }
    app.create_chat(&b).await;
    app.create_message(&a, 1, "I like pizza").await;
    app.create_message(&a, 1, "Nothing relevant in this one")
        .await;
    app.create_message(&a, 1, "Pizza, pizza, PIZZA: the pizza party")
        .await;
    app.create_message(&a, 2, "pizza in another chat").await;
    app.create_message(&b, 1, "pizza in another application")
        .await;
    app.create_message(&a, 1, "pizza that gets deleted").await;
    app.flush().await;
    assert_eq!(
        app.delete(&format!("/applications/{a}/chats/1/messages/4"))
            .await
            .status(),
        204
    );

    assert_eq!(
        numbers(&app, &a, 1, "pizza").await,
        [3, 1],
        "most relevant first; other chats and deleted ones never"
    );
    assert_eq!(numbers(&app, &a, 2, "pizza").await, [1]);
    assert_eq!(numbers(&app, &b, 1, "pizza").await, [1]);
    assert!(numbers(&app, &a, 1, "sushi").await.is_empty());
    // Text that looks like SQL or a filter is just words.
    assert!(
        numbers(&app, &a, 1, "chat_id = 2 OR 1=1; DROP TABLE messages --")
            .await
            .is_empty()
    );
    assert_eq!(app.count("messages").await, 6);

    let r = app
        .client
        .get(app.url(&format!(
            "/applications/{a}/chats/1/messages/search?q=pizza&per_page=1&page=2"
        )))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["messages"][0]["number"], 1);
    assert_eq!(
        body["meta"],
        json!({ "page": 2, "per_page": 1, "next_page": null, "previous_page": 1, "next_cursor": null })
    );
}

#[tokio::test]
async fn database_search_handles_cyrillic_and_segments_cjk() {
    let app = spawn_app().await;
    let t = app.create_app("scripts").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "Привет, мир! Как дела? Съешь ещё")
        .await;
    app.create_message(&t, c, "我们在北京的天安门广场见面")
        .await;
    app.create_message(&t, c, "Hello world, café").await;
    app.flush().await;
    assert_eq!(
        numbers(&app, &t, c, "привет").await,
        [1],
        "Cyrillic, case-insensitive"
    );
    assert_eq!(numbers(&app, &t, c, "ДЕЛА").await, [1]);
    assert_eq!(numbers(&app, &t, c, "ещё").await, [1]);
    // Chinese without spaces is segmented into words (jieba, through
    // charabia), so a word inside a run is found.
    assert_eq!(
        numbers(&app, &t, c, "北京").await,
        [2],
        "a word inside a run"
    );
    assert_eq!(numbers(&app, &t, c, "天安门").await, [2]);
    assert!(numbers(&app, &t, c, "上海").await.is_empty());
    // Short words count (no minimum length), and diacritics fold.
    assert_eq!(numbers(&app, &t, c, "мир").await, [1]);
    assert_eq!(numbers(&app, &t, c, "cafe").await, [3]);
}

/// The index follows edits and deletes of messages, chats and applications,
/// and keeps nothing of what is gone.
#[tokio::test]
async fn database_index_follows_edits_and_deletes() {
    let app = spawn_app().await;
    let a = app.create_app("a").await;
    let b = app.create_app("b").await;
    let c1 = app.create_chat(&a).await;
    let c2 = app.create_chat(&a).await;
    let cb = app.create_chat(&b).await;
    app.create_message(&a, c1, "the quick brown fox").await;
    app.create_message(&a, c1, "lazy dogs sleep").await;
    app.create_message(&a, c2, "a quick fox in chat two").await;
    app.create_message(&b, cb, "quick foxes of another tenant")
        .await;
    app.flush().await;
    assert_eq!(numbers(&app, &a, c1, "quick").await, [1]);
    let r = app
        .put(
            &format!("/applications/{a}/chats/{c1}/messages/1"),
            json!({"body": "the slow green turtle"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.delete(&format!("/applications/{a}/chats/{c1}/messages/2"))
            .await
            .status(),
        204
    );
    app.index().await;
    assert!(
        numbers(&app, &a, c1, "quick").await.is_empty(),
        "edited away"
    );
    assert_eq!(numbers(&app, &a, c1, "turtle").await, [1], "edited in");
    assert!(numbers(&app, &a, c1, "lazy").await.is_empty());
    let (postings, documents): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM search_postings), (SELECT COUNT(*) FROM search_documents)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    // 4 + 6 + 5 terms of the three live messages; the deleted one is gone.
    assert_eq!((postings, documents), (4 + 6 + 5, 3));
    let stats: (i64, i64) =
        sqlx::query_as("SELECT documents, length FROM search_chats s JOIN chats c ON c.id = s.chat_id JOIN applications a ON a.id = c.application_id WHERE a.token = ? AND c.number = ?")
            .bind(&a)
            .bind(c1)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(stats, (1, 4), "the chat's statistics follow");

    assert_eq!(
        app.delete(&format!("/applications/{a}/chats/{c2}"))
            .await
            .status(),
        204
    );
    app.index().await;
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM search_documents")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 2, "a deleted chat's index goes");
    assert_eq!(
        app.delete(&format!("/applications/{a}")).await.status(),
        204
    );
    app.index().await;
    let left: (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM search_postings), (SELECT COUNT(*) FROM search_documents), (SELECT COUNT(*) FROM search_chats)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(left, (5, 1, 1), "only the other tenant's index is left");
    assert_eq!(numbers(&app, &b, cb, "quick").await, [1]);
}

/// Every indexed message's lag reaches `/metrics`.
#[tokio::test]
async fn database_search_lag_is_reported() {
    let app = spawn_app().await;
    let t = app.create_app("lag").await;
    let c = app.create_chat(&t).await;
    let before = lag_count(&app.metrics_text().await);
    for i in 0..5 {
        app.create_message(&t, c, &format!("lagging words {i}"))
            .await;
    }
    app.flush().await;
    assert_eq!(numbers(&app, &t, c, "lagging").await.len(), 5);
    let after = lag_count(&app.metrics_text().await);
    // The recorder is global to the test process: other tests add to it.
    assert!(after >= before + 5, "{before} -> {after}");
}

fn lag_count(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_search_lag_seconds_count "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// `chat-api reindex` builds the term index of stored messages that were
/// never indexed (an upgrade from the FULLTEXT backend), idempotently.
#[tokio::test]
async fn reindex_builds_the_term_index_from_mariadb() {
    let app = spawn_app().await;
    let t = app.create_app("reindex").await;
    let c = app.create_chat(&t).await;
    for i in 0..30 {
        app.create_message(&t, c, &format!("stored before the upgrade {i}"))
            .await;
    }
    app.flush().await;
    for table in ["search_postings", "search_documents", "search_chats"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&app.pool)
            .await
            .unwrap();
    }
    assert!(numbers(&app, &t, c, "upgrade").await.is_empty());
    assert!(
        chat_api::store::search::terms::needs_reindex(&app.pool)
            .await
            .unwrap()
    );
    for _ in 0..2 {
        let n = chat_api::jobs::indexer::reindex(&app.pool, None, 7, 1, |_| {})
            .await
            .unwrap();
        assert_eq!(n, 30);
    }
    assert!(
        !chat_api::store::search::terms::needs_reindex(&app.pool)
            .await
            .unwrap()
    );
    assert_eq!(numbers(&app, &t, c, "upgrade").await.len(), 20, "one page");
    let docs: (i64, i64) = sqlx::query_as("SELECT documents, length FROM search_chats")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(docs, (30, 30 * 5), "twice is the same as once");
}

#[tokio::test]
async fn search_input_is_validated_and_the_search_route_wins() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "searchable words").await;
    app.flush().await;
    // `/messages/search` is not taken for `/messages/{n}`.
    assert_eq!(numbers(&app, &t, c, "searchable").await, [1]);
    let missing = app
        .client
        .get(app.url(&format!("/applications/{t}/chats/{c}/messages/search")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 422);
    assert_eq!(search(&app, &t, c, "").await.status(), 422);
    assert_eq!(search(&app, &t, c, "   ").await.status(), 422);
    assert_eq!(search(&app, &t, c, &"a".repeat(513)).await.status(), 422);
    assert_eq!(search(&app, &t, c, &"a".repeat(512)).await.status(), 200);
    assert_eq!(
        search(&app, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", c, "x")
            .await
            .status(),
        404
    );
    assert_eq!(search(&app, &t, 99, "x").await.status(), 404);
    let err: Value = search(&app, &t, c, "").await.json().await.unwrap();
    assert!(err["error"].as_str().unwrap().contains("q"));
}

/// The service with the Meilisearch backend on a fresh index of the server
/// at `MEILI_URL`, and its indexer; `None` (after printing a SKIPPED line
/// naming `test`) when `MEILI_URL` is not set.
pub(crate) async fn spawn_meili_app(
    test: &str,
) -> Option<(TestApp, std::sync::Arc<chat_api::jobs::indexer::Indexer>)> {
    let Ok(url) = std::env::var("MEILI_URL") else {
        eprintln!("SKIPPED {test}: MEILI_URL is not set (no Meilisearch server to test against)");
        return None;
    };
    let index = format!("test_{}", uuid::Uuid::new_v4().simple());
    let app = spawn_app_with(|c| {
        c.meili_url = Some(url);
        c.meili_api_key = std::env::var("MEILI_API_KEY").ok();
        c.meili_index = index;
    })
    .await;
    let indexer = app.indexer.clone();
    Some((app, indexer))
}

/// Runs the indexer and searches `q` in the chat until the number of hits
/// satisfies `enough` (within 20 s). The search answers 503 until the indexer
/// has set the index up. Returns whether it got there.
pub(crate) async fn until_indexed(
    app: &TestApp,
    indexer: &chat_api::jobs::indexer::Indexer,
    token: &str,
    chat: i64,
    q: &str,
    enough: impl Fn(usize) -> bool,
) -> bool {
    app.eventually(Duration::from_secs(20), || async {
        let _ = indexer.index_once().await;
        let r = search(app, token, chat, q).await;
        r.status() == 200
            && r.json::<Value>().await.unwrap()["messages"]
                .as_array()
                .is_some_and(|m| enough(m.len()))
    })
    .await
}

/// The Meilisearch backend, against the server at `MEILI_URL`.
#[tokio::test]
async fn meilisearch_backend_indexes_after_flush_and_follows_edits_and_deletes() {
    let Some((app, indexer)) =
        spawn_meili_app("meilisearch_backend_indexes_after_flush_and_follows_edits_and_deletes")
            .await
    else {
        return;
    };
    let a = app.create_app("a").await;
    app.create_chat(&a).await;
    app.create_chat(&a).await;
    app.create_message(&a, 1, "the quick brown fox").await;
    app.create_message(&a, 1, "lazy dogs sleep").await;
    app.create_message(&a, 2, "a quick fox in chat two").await;
    app.flush().await;
    let found = until_indexed(&app, &indexer, &a, 1, "quick", |n| n == 1).await;
    assert!(found, "indexed after the flush, scoped to chat 1");
    assert_eq!(numbers(&app, &a, 1, "quikc").await, [1], "typo tolerance");
    let hits = scored(&app, &a, 1, "quick").await;
    assert!(
        hits.iter().all(|h| (0.0..=1.0).contains(&h.1) && h.1 > 0.0),
        "Meilisearch's ranking score is in (0, 1]: {hits:?}"
    );

    assert_eq!(
        app.put(
            &format!("/applications/{a}/chats/1/messages/2"),
            json!({ "body": "lazy cats nap" })
        )
        .await
        .status(),
        200
    );
    assert_eq!(
        app.delete(&format!("/applications/{a}/chats/1/messages/1"))
            .await
            .status(),
        204
    );
    let followed = app
        .eventually(Duration::from_secs(20), || async {
            let _ = indexer.index_once().await;
            numbers(&app, &a, 1, "cats").await == [2]
                && numbers(&app, &a, 1, "quick").await.is_empty()
        })
        .await;
    assert!(followed, "edits re-index and deletes remove");
    assert_eq!(numbers(&app, &a, 2, "quick").await, [1]);
}

/// Meilisearch's ranking score on the hits, against the server at `MEILI_URL`.
#[tokio::test]
async fn meilisearch_scores_hits_best_first() {
    let Some((app, indexer)) = spawn_meili_app("meilisearch_scores_hits_best_first").await else {
        return;
    };
    let a = app.create_app("a").await;
    app.create_chat(&a).await;
    app.create_message(&a, 1, "an apple a day").await;
    app.create_message(&a, 1, "apple pie").await;
    app.create_message(&a, 1, "pie crust, then apple slices on top of the pie")
        .await;
    app.create_message(&a, 1, "nothing to see").await;
    app.flush().await;
    let indexed = until_indexed(&app, &indexer, &a, 1, "apple pie", |n| n >= 2).await;
    assert!(indexed, "indexed after the flush");
    let hits = scored(&app, &a, 1, "apple pie").await;
    println!("Meilisearch (number, score) for \"apple pie\": {hits:?}");
    assert_eq!(hits[0].0, 2, "the exact phrase ranks first: {hits:?}");
    assert_best_first(&hits);
    assert!(hits.iter().all(|h| (0.0..=1.0).contains(&h.1)), "{hits:?}");
    assert!(hits[0].1 > hits[hits.len() - 1].1, "{hits:?}");
    assert!(!hits.iter().any(|h| h.0 == 4));
}

/// With Meilisearch as the backend, nothing of the MariaDB search index is
/// written, on the flush path or after it: no FULLTEXT index exists, and the
/// term tables stay empty (runs without a server: the address is closed, so
/// the index ops stay queued).
#[tokio::test]
async fn a_meilisearch_backed_service_keeps_no_mariadb_search_index() {
    let app = spawn_app_with(|c| {
        c.meili_url = Some("http://127.0.0.1:9".into());
    })
    .await;
    let t = app.create_app("meili").await;
    let c = app.create_chat(&t).await;
    for i in 0..20 {
        app.create_message(&t, c, &format!("words that only Meilisearch indexes {i}"))
            .await;
    }
    app.flush().await;
    assert_eq!(app.count("messages").await, 20);
    let fulltext: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND INDEX_TYPE = 'FULLTEXT'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(fulltext, 0, "no FULLTEXT index is kept up by the flush");
    for table in ["search_postings", "search_documents", "search_chats"] {
        assert_eq!(app.count(table).await, 0, "{table} stays empty");
    }
    let queued = app
        .buffer
        .pending_len(chat_api::writebehind::Kind::Search)
        .await
        .unwrap();
    assert!(queued >= 1, "the batch's op waits for Meilisearch");
}
