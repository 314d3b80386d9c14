use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_message_can_be_read_edited_and_deleted_right_after_its_creation() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    // The chat was created a moment ago and is still buffered.
    let c = app.create_chat(&t).await;
    let body = "Привет, мир! 你好 😀\u{0}\ttabs and NUL";
    let n = app.create_message(&t, c, body).await;
    assert_eq!(n, 1);
    assert_eq!(
        app.count("messages").await,
        0,
        "creation does not touch SQL"
    );

    let r = app
        .get(&format!("/applications/{t}/chats/{c}/messages/{n}"))
        .await;
    assert_eq!(r.status(), 200);
    let got: Value = r.json().await.unwrap();
    assert_eq!(got["body"], body, "byte for byte");
    assert_eq!(got["number"], 1);
    assert_eq!(
        crate::helpers::keys_of(&got),
        ["body", "created_at", "number", "updated_at"]
    );

    let n2 = app.create_message(&t, c, "second").await;
    let r = app
        .put(
            &format!("/applications/{t}/chats/{c}/messages/{n2}"),
            json!({ "body": "edited ✎" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body"], "edited ✎");

    let n3 = app.create_message(&t, c, "third").await;
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/{c}/messages/{n3}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.get(&format!("/applications/{t}/chats/{c}/messages/{n3}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/{c}/messages/{n3}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/applications/{t}/chats/{c}/messages/4"))
            .await
            .status(),
        404
    );

    app.flush().await;
    let list: Value = app
        .get_json(&format!("/applications/{t}/chats/{c}/messages"))
        .await;
    let bodies: Vec<&str> = list["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, [body, "edited ✎"]);
    assert_eq!(
        app.create_message(&t, c, "fourth").await,
        4,
        "the deleted number 3 is not reused"
    );
}

#[tokio::test]
async fn five_hundred_concurrent_posts_get_numbers_1_to_500_and_are_all_stored() {
    let app = spawn_app().await;
    let t = app.create_app("load").await;
    let c = app.create_chat(&t).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let client = app.client.clone();
        let url = app.url(&format!("/applications/{t}/chats/{c}/messages"));
        tasks.spawn(async move {
            let body = format!("message {i}");
            let r = client
                .post(url)
                .json(&json!({ "body": body }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            (
                r.json::<Value>().await.unwrap()["number"].as_i64().unwrap(),
                body,
            )
        });
    }
    let mut acked = Vec::new();
    while let Some(r) = tasks.join_next().await {
        acked.push(r.unwrap());
    }
    let numbers: BTreeSet<i64> = acked.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        numbers,
        (1..=500).collect::<BTreeSet<_>>(),
        "unique and gapless"
    );

    app.flush().await;
    let mut stored = app.stored_messages(&t, c).await;
    stored.sort();
    acked.sort();
    assert_eq!(
        stored, acked,
        "exactly the acknowledged (number, body) pairs, once each"
    );
}

#[tokio::test]
async fn invalid_bodies_are_refused() {
    let app = spawn_app_with(|c| c.max_message_bytes = 10).await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    let path = format!("/applications/{t}/chats/{c}/messages");
    for body in [
        json!({ "body": "" }),
        json!({ "body": " \n\t" }),
        json!({ "body": "12345678901" }),
        json!({ "body": "ééééé1" }),
        json!({}),
        json!({ "body": null }),
    ] {
        let r = app.post(&path, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    assert_eq!(
        app.post(&path, json!({ "body": "ééééé" })).await.status(),
        201,
        "exactly 10 bytes fit"
    );
    let r = app
        .post(
            &format!("/applications/{t}/chats/99/messages"),
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(r.status(), 404);
    let r = app.put(&format!("{path}/1"), json!({ "body": "" })).await;
    assert_eq!(r.status(), 422);
    app.flush().await;
    assert_eq!(
        app.stored_messages(&t, c).await,
        vec![(1, "ééééé".to_string())]
    );
}

/// Every 422 about a body names the field by its JSON Pointer and the rule
/// it broke; unknown keys are ignored (the documented tolerant-reader
/// policy), in both shapes.
#[tokio::test]
async fn a_refused_body_names_its_field_and_unknown_keys_are_ignored() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    let path = format!("/applications/{t}/chats/{c}/messages");
    for (body, pointer, rule) in [
        (
            json!({ "body": 5 }),
            "/body",
            "expected a string, found an integer",
        ),
        (json!({}), "/body", "required, and missing"),
        (json!({ "body": null }), "/body", "required, and null"),
        (json!({ "body": " " }), "/body", "must not be blank"),
        (json!([1]), "", "expected a JSON object, found an array"),
        (
            json!({ "message": { "body": [] } }),
            "/message/body",
            "expected a string, found an array",
        ),
        (
            json!({ "message": { "body": "x" }, "body": "y" }),
            "/message",
            "not both",
        ),
        (
            json!({ "message": "x" }),
            "/message",
            "must be a JSON object",
        ),
    ] {
        let r = app.post(&path, body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["pointer"], pointer, "{body}: {e}");
        let error = e["error"].as_str().unwrap();
        assert!(error.contains(rule), "{body}: {error}");
        if !pointer.is_empty() {
            assert!(error.contains(&format!("`{pointer}`")), "{error}");
        }
    }
    let r = app
        .put(
            &format!("/applications/{t}"),
            json!({ "name": "n".repeat(256) }),
        )
        .await;
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["pointer"], "/name", "{e}");
    assert!(
        e["error"].as_str().unwrap().contains("maxLength(255)"),
        "{e}"
    );
    // Errors that are not about a body field carry no pointer.
    let e: Value = app
        .get(&format!("/applications/{t}/chats/99"))
        .await
        .json()
        .await
        .unwrap();
    assert!(e.get("pointer").is_none(), "{e}");

    // Unknown keys are ignored, flat and wrapped.
    let r = app.post(&path, json!({ "body": "flat", "foo": 1 })).await;
    assert_eq!(r.status(), 201);
    let r = app
        .post(
            &path,
            json!({ "message": { "body": "wrapped", "sender": "x" } }),
        )
        .await;
    assert_eq!(r.status(), 201);
    app.flush().await;
    assert_eq!(
        app.stored_messages(&t, c).await,
        vec![(1, "flat".to_string()), (2, "wrapped".to_string())]
    );
}

#[tokio::test]
async fn messages_are_paginated_by_number() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 1..=7 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    app.flush().await;
    let page: Value = app
        .get_json(&format!(
            "/applications/{t}/chats/{c}/messages?page=2&per_page=3"
        ))
        .await;
    let numbers: Vec<i64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [4, 5, 6]);
    assert_eq!(
        page["meta"],
        json!({ "page": 2, "per_page": 3, "next_page": 3, "previous_page": 1, "next_after": 6 })
    );
    assert_eq!(
        app.get(&format!(
            "/applications/{t}/chats/{c}/messages?per_page=1000"
        ))
        .await
        .status(),
        422
    );
}
