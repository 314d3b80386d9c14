//! Message search: the MariaDB FULLTEXT backend always; the Meilisearch
//! backend where `MEILI_URL` points at a server.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

async fn search(app: &TestApp, token: &str, chat: i64, q: &str) -> reqwest::Response {
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
    println!("MariaDB (number, score) for \"apple\": {hits:?}");
    assert_eq!(
        hits.iter().map(|h| h.0).collect::<Vec<_>>(),
        [2, 4, 1],
        "more occurrences rank higher: {hits:?}"
    );
    assert_best_first(&hits);
    assert!(hits.iter().all(|h| h.1 > 0.0), "{hits:?}");
    assert!(hits[0].1 > hits[2].1, "{hits:?}");
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
        json!({ "page": 2, "per_page": 1, "next_page": null, "previous_page": 1 })
    );
}

#[tokio::test]
async fn database_search_handles_cyrillic_and_whole_cjk_words() {
    let app = spawn_app().await;
    let t = app.create_app("scripts").await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "Привет, мир! Как дела?").await;
    app.create_message(&t, c, "你好 东京都 欢迎").await;
    app.create_message(&t, c, "Hello world").await;
    app.flush().await;
    assert_eq!(
        numbers(&app, &t, c, "привет").await,
        [1],
        "Cyrillic, case-insensitive"
    );
    assert_eq!(numbers(&app, &t, c, "ДЕЛА").await, [1]);
    assert_eq!(
        numbers(&app, &t, c, "东京都").await,
        [2],
        "a whole space-delimited CJK word of 3+ characters"
    );
    // Documented limits of InnoDB's parser: no CJK segmentation, so a
    // substring is not a word; and words under 3 characters are not indexed.
    assert!(numbers(&app, &t, c, "东京").await.is_empty());
    assert!(numbers(&app, &t, c, "你好").await.is_empty());
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
async fn spawn_meili_app(
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
    let indexer = app.indexer.clone().expect("an indexer runs with MEILI_URL");
    Some((app, indexer))
}

/// Runs the indexer and searches `q` in the chat until the number of hits
/// satisfies `enough` (within 20 s). The search answers 503 until the indexer
/// has set the index up. Returns whether it got there.
async fn until_indexed(
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

#[tokio::test]
async fn the_fulltext_index_is_never_dropped_or_built_silently() {
    use chat_api::store::search::database::{
        create_fulltext_index, drop_fulltext_index, fulltext_index_exists,
    };
    let app = spawn_app().await;
    assert!(fulltext_index_exists(&app.pool).await.unwrap());
    // Searching with MariaDB without the index: start-up refuses and says how
    // to build it (never a 500 at the first search).
    assert!(drop_fulltext_index(&app.pool).await.unwrap());
    assert!(!drop_fulltext_index(&app.pool).await.unwrap(), "idempotent");
    let err = chat_api::startup::Application::build(app.config.clone(), false)
        .await
        .err()
        .expect("start-up refuses MariaDB search without the index");
    assert!(
        format!("{err:#}").contains("chat-api fulltext create"),
        "{err:#}"
    );
    // The command's step builds it back, and start-up accepts it again.
    assert!(create_fulltext_index(&app.pool).await.unwrap());
    assert!(fulltext_index_exists(&app.pool).await.unwrap());
    let token = app.create_app("fulltext").await;
    let chat = app.create_chat(&token).await;
    app.create_message(&token, chat, "the index is back").await;
    app.flush().await;
    assert_eq!(scored(&app, &token, chat, "index").await.len(), 1);
}
