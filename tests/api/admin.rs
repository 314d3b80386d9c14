//! The operator API: the key gate, queue inspection against the real Redis
//! state, dead-letter replay end to end, discard, forced flush, and the
//! cross-application listings.

use std::collections::HashSet;
use std::time::Duration;

use chat_api::writebehind::Kind;
use redis::AsyncCommands;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

const KEY: &str = "test-operator-key-3f9c2a7d";

async fn spawn_admin() -> TestApp {
    spawn_app_with(|c| c.admin_api_key = Some(KEY.into())).await
}

async fn admin(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = app
        .client
        .request(method, app.url(&format!("/admin{path}")))
        .bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    req.send().await.expect("request sent")
}

async fn admin_json(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let r = admin(app, method, path, body).await;
    assert_eq!(r.status(), 200, "{path}");
    r.json().await.unwrap()
}

/// GET an admin path with the key; asserts 200 and returns the body.
async fn admin_get(app: &TestApp, path: &str) -> Value {
    admin_json(app, reqwest::Method::GET, path, None).await
}

fn queue<'a>(view: &'a Value, name: &str) -> &'a Value {
    view["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == name)
        .unwrap_or_else(|| panic!("queue {name} in {view}"))
}

const ADMIN_PATHS: [(&str, &str); 7] = [
    ("GET", "/queues"),
    ("GET", "/dead-letters?queue=messages"),
    ("POST", "/dead-letters/replay"),
    ("DELETE", "/dead-letters?queue=messages"),
    ("POST", "/flush"),
    ("GET", "/chats"),
    ("GET", "/messages"),
];

#[tokio::test]
async fn without_a_configured_key_every_admin_path_is_404_even_with_a_key() {
    let app = spawn_app().await;
    for (method, path) in ADMIN_PATHS {
        for key in [None, Some(KEY)] {
            let mut req = app
                .client
                .request(method.parse().unwrap(), app.url(&format!("/admin{path}")));
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let r = req.json(&json!({})).send().await.unwrap();
            assert_eq!(r.status(), 404, "{method} {path}");
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].is_string());
        }
    }
}

#[tokio::test]
async fn a_missing_or_wrong_key_is_401_and_the_right_key_is_200() {
    let app = spawn_admin().await;
    let same_length_wrong: String = KEY.chars().rev().collect();
    for (method, path) in ADMIN_PATHS {
        let url = app.url(&format!("/admin{path}"));
        let m: reqwest::Method = method.parse().unwrap();
        for (label, auth) in [
            ("missing", None),
            ("wrong", Some("nope".to_string())),
            ("same length, wrong", Some(same_length_wrong.clone())),
            ("basic", Some(String::new())),
        ] {
            let mut req = app.client.request(m.clone(), &url).json(&json!({}));
            req = match (label, auth) {
                ("basic", _) => req.basic_auth("admin", Some(KEY)),
                (_, Some(k)) => req.bearer_auth(k),
                (_, None) => req,
            };
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{label} key on {method} {path}");
            assert!(
                r.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
            );
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains("Bearer"));
        }
        let r = app
            .client
            .request(m.clone(), &url)
            .bearer_auth(KEY)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "right key on {method} {path}");
    }
    // Tenants' routes need no key.
    assert_eq!(
        app.post("/applications", json!({"name": "x"}))
            .await
            .status(),
        201
    );
    // The key never shows in the configuration's Debug output (what a log would print).
    assert!(!format!("{:?}", app.config).contains(KEY));
}

#[tokio::test]
async fn queue_figures_match_the_real_redis_state() {
    let app = spawn_admin().await;
    let token = app.create_app("ops").await;
    let chats = futures::future::join_all((0..3).map(|_| app.create_chat(&token))).await;
    assert_eq!(chats.len(), 3);
    futures::future::join_all(
        (0..12).map(|i| app.create_message(&token, 1 + i % 3, "hello operators")),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A batch in the hands of a flusher (this one, named by INSTANCE_ID).
    let batch = app
        .buffer
        .lease_queue()
        .claim(
            &app.shard(&token).record_queue(Kind::Messages),
            5,
            Duration::from_secs(30),
        )
        .await
        .unwrap()
        .unwrap();
    // And a dead letter.
    let mut c = app.redis_conn().await;
    let dead_key = app.shard(&token).dead_letter(Kind::Chats);
    let entry = chat_api::writebehind::deadletter::entry(b"1\t999\t1700000000000", "test");
    let _: () = c.rpush(&dead_key, &entry).await.unwrap();

    let view = admin_get(&app, "/queues").await;
    assert_eq!(view["instance"], app.buffer.owner());
    for (name, kind) in [
        ("chats", Kind::Chats),
        ("messages", Kind::Messages),
        ("search", Kind::Search),
    ] {
        let q = queue(&view, name);
        let (mut pending, mut dead) = (0u64, 0u64);
        for shard in app.buffer.keys().shards() {
            pending += c.llen::<_, u64>(shard.pending(kind)).await.unwrap();
            dead += c.llen::<_, u64>(shard.dead_letter(kind)).await.unwrap();
        }
        assert_eq!(q["pending"], pending, "{name}");
        assert_eq!(q["dead_letters"], dead, "{name}");
    }
    let chats_q = queue(&view, "chats");
    let messages_q = queue(&view, "messages");
    assert_eq!(chats_q["pending"], 3);
    assert_eq!(messages_q["pending"], 7);
    assert_eq!(chats_q["dead_letters"], 1);
    for q in [chats_q, messages_q] {
        let age = q["oldest_pending_age_secs"].as_f64().unwrap();
        assert!((0.3..60.0).contains(&age), "age {age}");
    }
    assert!(queue(&view, "search")["oldest_pending_age_secs"].is_null());
    let processing = messages_q["processing"].as_array().unwrap();
    assert_eq!(processing.len(), 1);
    let b = &processing[0];
    assert!(batch.key.ends_with(b["id"].as_str().unwrap()));
    assert_eq!(b["owner"], app.buffer.owner());
    assert_eq!(b["records"], 5);
    let left = b["lease_expires_in_secs"].as_f64().unwrap();
    assert!((25.0..=30.0).contains(&left), "lease left {left}");
    assert!(b["claimed_at"].is_string() && b["lease_expires_at"].is_string());
    assert!(chats_q["processing"].as_array().unwrap().is_empty());

    // The forced flush writes what is pending (not the claimed batch).
    let flushed = admin_json(&app, reqwest::Method::POST, "/flush", None).await;
    assert_eq!(flushed["written"], 3 + 7);
    assert_eq!(flushed["drained"], true);
    assert_eq!(
        flushed["budget_ms"],
        chat_api::http::admin::queues::FLUSH_BUDGET_SECS * 1000
    );
    // The flushed messages' search op was applied too.
    assert!(
        flushed["search_ops_applied"].as_u64().unwrap() >= 1,
        "{flushed}"
    );
    assert_eq!(app.count("messages").await, 7);
    // Once its flusher gives the batch back, the rest follows.
    app.buffer.lease_queue().give_back(&batch).await.unwrap();
    let view = admin_get(&app, "/queues").await;
    assert_eq!(queue(&view, "messages")["pending"], 5);
    assert!(
        queue(&view, "messages")["processing"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    let flushed = admin_json(&app, reqwest::Method::POST, "/flush", None).await;
    assert_eq!(flushed["written"], 5);
    assert_eq!(app.count("messages").await, 12);
    let view = admin_get(&app, "/queues").await;
    assert_eq!(queue(&view, "messages")["pending"], 0);
    assert!(queue(&view, "messages")["oldest_pending_age_secs"].is_null());
}

/// Rows of chat `chat` of the application, and of its messages.
async fn stored(app: &TestApp, token: &str, chat: i64) -> (i64, i64) {
    let chats: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM chats c JOIN applications a ON a.id = c.application_id \
         WHERE a.token = ? AND c.number = ?",
    )
    .bind(token)
    .bind(chat)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    (chats, app.stored_messages(token, chat).await.len() as i64)
}

#[tokio::test]
async fn a_dead_lettered_chat_and_its_message_are_replayed_once_the_cause_is_fixed() {
    let app = spawn_app_with(|c| {
        c.admin_api_key = Some(KEY.into());
        c.orphan_max_age = Duration::from_secs(1);
    })
    .await;
    // The cause: MariaDB refuses chat 2 (a trigger standing in for any
    // per-row failure: a constraint, a bad value, a bug).
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_chat_2 BEFORE INSERT ON chats FOR EACH ROW \
         IF NEW.number = 2 THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'chat 2 refused'; END IF",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let token = app.create_app("replay").await;
    app.create_chat(&token).await;
    app.create_chat(&token).await;
    app.create_message(&token, 1, "fine").await;
    app.create_message(&token, 2, "stuck behind its chat").await;

    let r = app.flusher.flush_once().await.unwrap();
    assert_eq!((r.written, r.dead_lettered, r.deferred), (2, 1, 1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app.flusher.flush_once().await.unwrap();
    assert_eq!(r.dead_lettered, 1, "the orphaned message is dead-lettered");
    assert_eq!(stored(&app, &token, 2).await, (0, 0));

    let chats = admin_get(&app, "/dead-letters?queue=chats").await;
    assert_eq!(chats["total"], 1);
    let chat_entry = &chats["dead_letters"][0];
    assert!(
        chat_entry["reason"]
            .as_str()
            .unwrap()
            .contains("chat 2 refused"),
        "{chat_entry}"
    );
    assert!(chat_entry["failed_at"].is_string());
    assert_eq!(chat_entry["queue"], "chats");
    let messages = admin_get(&app, "/dead-letters?queue=messages").await;
    assert_eq!(messages["total"], 1);
    let message_entry = &messages["dead_letters"][0];
    assert!(
        message_entry["record"]
            .as_str()
            .unwrap()
            .ends_with("\tstuck behind its chat")
    );
    assert!(
        message_entry["reason"]
            .as_str()
            .unwrap()
            .contains("never reached the database")
    );

    // Replaying before the fix only dead-letters it again, with a new time.
    let r = admin_json(
        &app,
        reqwest::Method::POST,
        "/dead-letters/replay",
        Some(json!({"queue": "chats"})),
    )
    .await;
    assert_eq!(r["replayed"], 1);
    admin_json(&app, reqwest::Method::POST, "/flush", None).await;
    // The replay woke the flusher, which may hold the batch while the forced
    // flush finds the queue empty: wait for the write to settle.
    let mut again = Value::Null;
    for _ in 0..50 {
        again = admin_get(&app, "/dead-letters?queue=chats").await;
        if again["total"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(again["total"], 1);
    assert_ne!(again["dead_letters"][0]["id"], chat_entry["id"]);

    // Fix the cause, replay everything (chats first), flush.
    sqlx::raw_sql("DROP TRIGGER refuse_chat_2")
        .execute(&app.pool)
        .await
        .unwrap();
    let r = admin_json(
        &app,
        reqwest::Method::POST,
        "/dead-letters/replay",
        Some(json!({"ids": [again["dead_letters"][0]["id"], message_entry["id"], "0123456789abcdef0123456789abcdef"]})),
    )
    .await;
    assert_eq!(r["replayed"], 2);
    assert_eq!(r["not_found"], json!(["0123456789abcdef0123456789abcdef"]));
    // The replay woke the flusher too: its pass may hold the chat while a
    // forced flush defers the message (deferred, not dead-lettered: a
    // replay restarts the orphan clock), so flush until both are stored.
    let mut dead_lettered = 0;
    for _ in 0..50 {
        let flushed = admin_json(&app, reqwest::Method::POST, "/flush", None).await;
        dead_lettered += flushed["dead_lettered"].as_u64().unwrap();
        if flushed["drained"] == true && stored(&app, &token, 2).await == (1, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead_lettered, 0);
    assert_eq!(stored(&app, &token, 2).await, (1, 1), "exactly once");
    let m = app
        .get_json(&format!("/applications/{token}/chats/2/messages/1"))
        .await;
    assert_eq!(m["body"], "stuck behind its chat");

    // Nothing is left to replay, and a second replay changes nothing.
    let view = admin_get(&app, "/queues").await;
    assert_eq!(queue(&view, "chats")["dead_letters"], 0);
    assert_eq!(queue(&view, "messages")["dead_letters"], 0);
    let r = admin_json(
        &app,
        reqwest::Method::POST,
        "/dead-letters/replay",
        Some(json!({})),
    )
    .await;
    assert_eq!(r["replayed"], 0);
    admin_json(&app, reqwest::Method::POST, "/flush", None).await;
    assert_eq!(stored(&app, &token, 2).await, (1, 1));
    assert_eq!(app.count("chats").await, 2);
    assert_eq!(app.count("messages").await, 2);
}

#[tokio::test]
async fn discarding_removes_the_given_entries_or_all_and_counts_them() {
    let app = spawn_admin().await;
    let mut c = app.redis_conn().await;
    let key = app.buffer.keys().shard(0).dead_letter(Kind::Messages);
    let lost = app.buffer.keys().shard(0).lost();
    for i in 0..5 {
        let e =
            chat_api::writebehind::deadletter::entry(format!("1\t1\t{i}\t0\tx").as_bytes(), "test");
        let _: () = c.rpush(&key, e).await.unwrap();
        // The mark a lookup answers from (see deadletter::lost_field).
        let _: () = c.hset(&lost, format!("m:1:1:{i}"), "test").await.unwrap();
    }
    let page = admin_get(&app, "/dead-letters?queue=messages&per_page=2&page=1").await;
    assert_eq!(page["total"], 5);
    assert_eq!(page["meta"]["next_page"], 2);
    let ids: Vec<String> = page["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    let r = admin_json(
        &app,
        reqwest::Method::DELETE,
        &format!(
            "/dead-letters?queue=messages&id={}&id={}&id=feedfacefeedfacefeedfacefeedface",
            ids[0], ids[1]
        ),
        None,
    )
    .await;
    assert_eq!(r["discarded"], 2);
    assert_eq!(r["not_found"], json!(["feedfacefeedfacefeedfacefeedface"]));
    let left: Vec<String> = c.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(
        left.iter()
            .all(|e| !e.contains(r"1\t1\t0\t") && !e.contains(r"1\t1\t1\t")),
        "the two oldest were discarded: {left:?}"
    );
    let mut marks: Vec<String> = c.hkeys(&lost).await.unwrap();
    marks.sort();
    assert_eq!(
        marks,
        ["m:1:1:2", "m:1:1:3", "m:1:1:4"],
        "their lost marks went too"
    );
    let r = admin_json(
        &app,
        reqwest::Method::DELETE,
        "/dead-letters?queue=messages",
        None,
    )
    .await;
    assert_eq!(r["discarded"], 3);
    assert_eq!(c.llen::<_, u64>(&key).await.unwrap(), 0);
    assert_eq!(c.hlen::<_, u64>(&lost).await.unwrap(), 0, "and theirs");
    // An unknown queue is a 422, not a 500.
    let r = admin(
        &app,
        reqwest::Method::DELETE,
        "/dead-letters?queue=everything",
        None,
    )
    .await;
    assert_eq!(r.status(), 422);
    // Ids are 32 lowercase hex characters, JSON strings only.
    for body in [
        json!({"ids": [false]}),
        json!({"ids": ["x"]}),
        json!({"ids": "abc"}),
    ] {
        let r = admin(
            &app,
            reqwest::Method::POST,
            "/dead-letters/replay",
            Some(body.clone()),
        )
        .await;
        assert_eq!(r.status(), 422, "{body}");
    }
}

#[tokio::test]
async fn cross_application_listings_page_with_after_newest_first() {
    let app = spawn_admin().await;
    let a = app.create_app("a").await;
    let b = app.create_app("b").await;
    let mut expected_messages = HashSet::new();
    for (token, chats) in [(&a, 3), (&b, 2)] {
        for _ in 0..chats {
            let chat = app.create_chat(token).await;
            for _ in 0..2 {
                let n = app
                    .create_message(token, chat, &format!("{token} {chat}"))
                    .await;
                expected_messages.insert((token.clone(), chat, n));
            }
        }
    }
    app.flush().await;

    // Chats, 2 per page: 2 + 2 + 1.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(c) => format!("/chats?per_page=2&after={c}"),
            None => "/chats?per_page=2".into(),
        };
        let page = admin_get(&app, &path).await;
        pages += 1;
        for c in page["chats"].as_array().unwrap() {
            seen.push((
                chrono::DateTime::parse_from_rfc3339(c["created_at"].as_str().unwrap()).unwrap(),
                c["application_token"].as_str().unwrap().to_owned(),
                c["number"].as_i64().unwrap(),
            ));
        }
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    let distinct: HashSet<_> = seen.iter().map(|(_, t, n)| (t.clone(), *n)).collect();
    assert_eq!(distinct.len(), 5);
    assert!(
        seen.windows(2).all(|w| w[0].0 >= w[1].0),
        "newest first: {seen:?}"
    );
    assert_eq!(seen[0].1, b, "the last chat created comes first");
    assert_eq!((seen[4].1.as_str(), seen[4].2), (a.as_str(), 1));

    // Messages, 3 per page: 3 + 3 + 3 + 1.
    let mut got = HashSet::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &after {
            Some(c) => format!("/messages?per_page=3&after={c}"),
            None => "/messages?per_page=3".into(),
        };
        let page = admin_get(&app, &path).await;
        pages += 1;
        for m in page["messages"].as_array().unwrap() {
            let token = m["application_token"].as_str().unwrap().to_owned();
            let chat = m["chat_number"].as_i64().unwrap();
            assert_eq!(m["body"], format!("{token} {chat}"));
            assert!(got.insert((token, chat, m["number"].as_i64().unwrap())));
        }
        match page["meta"]["next_cursor"].as_str() {
            Some(c) => after = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(got, expected_messages);

    for bad in [
        "/chats?after=not-a-cursor",
        "/chats?after=0123456789ABCDEF0123456789ABCDEF",
        "/messages?per_page=0",
        "/chats?per_page=101",
    ] {
        let r = admin(&app, reqwest::Method::GET, bad, None).await;
        assert_eq!(r.status(), 422, "{bad}");
    }
    // Any 32 lowercase hex characters are a cursor: all zeros is "before 1970".
    let r = admin_get(&app, &format!("/chats?after={}", "0".repeat(32))).await;
    assert_eq!(r["chats"], json!([]));
    let r = admin_get(&app, &format!("/chats?after={}", "f".repeat(32))).await;
    assert_eq!(
        r["chats"],
        json!([]),
        "a negative time is clamped to year 1000"
    );
    let r = admin_get(&app, &format!("/chats?after=7{}", "f".repeat(31))).await;
    assert_eq!(
        r["chats"].as_array().unwrap().len(),
        5,
        "the far future: everything"
    );
}

#[tokio::test]
async fn replaying_all_goes_through_a_long_list_in_chunks_and_leaves_unreadable_entries() {
    let app = spawn_admin().await;
    let mut c = app.redis_conn().await;
    let key = app.buffer.keys().shard(0).dead_letter(Kind::Chats);
    let _: () = c
        .rpush(&key, "not an entry this service wrote")
        .await
        .unwrap();
    for i in 0..449 {
        let e = chat_api::writebehind::deadletter::entry(format!("999\t{i}\t0").as_bytes(), "test");
        let _: () = c.rpush(&key, e).await.unwrap();
    }
    let r = admin_json(
        &app,
        reqwest::Method::POST,
        "/dead-letters/replay",
        Some(json!({"queue": "chats"})),
    )
    .await;
    assert_eq!(r["replayed"], 449);
    let left: Vec<String> = c.lrange(&key, 0, -1).await.unwrap();
    assert_eq!(left, ["not an entry this service wrote"]);
    let list = admin_get(&app, "/dead-letters?queue=chats").await;
    assert_eq!(list["total"], 1);
    assert!(
        list["dead_letters"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("unreadable")
    );
    assert!(list["dead_letters"][0]["failed_at"].is_null());
    // Counted for /metrics (the recorder is shared by the tests of this
    // process, so at least this replay's records).
    let metrics = app.metrics_text().await;
    let replayed: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("chat_dead_letters_replayed_total{queue=\"chats\"} "))
        .expect("the replay counter is exported")
        .parse()
        .unwrap();
    assert!(replayed >= 449.0, "{replayed}");
}
