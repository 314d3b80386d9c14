//! Request shapes that clients of Rails implementations send: bodies wrapped
//! under the resource's name (`{"application": {"name": …}}`,
//! `{"message": {"body": …}}`) and `?query=` for search, beside the flat
//! shapes and `?q=`.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// The `error` of a response, asserting its status.
async fn error_of(r: reqwest::Response, status: u16, what: &str) -> String {
    assert_eq!(r.status(), status, "{what}");
    let body: Value = r.json().await.unwrap();
    body["error"].as_str().expect("a JSON error").to_string()
}

#[tokio::test]
async fn applications_accept_the_flat_and_the_wrapped_shape() {
    let app = spawn_app().await;
    for (shape, body) in [
        ("flat", json!({"name": "flat app"})),
        ("wrapped", json!({"application": {"name": "wrapped app"}})),
    ] {
        let r = app.post("/applications", body).await;
        assert_eq!(r.status(), 201, "POST {shape}");
        let created: Value = r.json().await.unwrap();
        assert_eq!(created["name"], format!("{shape} app"));
        let token = created["token"].as_str().unwrap();

        for (how, rename) in [
            ("flat", json!({"name": "renamed flat"})),
            (
                "wrapped",
                json!({"application": {"name": "renamed wrapped"}}),
            ),
        ] {
            let r = app.put(&format!("/applications/{token}"), rename).await;
            assert_eq!(r.status(), 200, "PUT {how} on a {shape} app");
            let renamed: Value = r.json().await.unwrap();
            assert_eq!(renamed["name"], format!("renamed {how}"));
            assert_eq!(
                crate::helpers::keys_of(&renamed),
                ["chats_count", "created_at", "name", "token", "updated_at"],
                "the response does not change"
            );
        }
    }
    assert_eq!(app.count("applications").await, 2);
}

#[tokio::test]
async fn messages_accept_the_flat_and_the_wrapped_shape() {
    let app = spawn_app().await;
    let token = app.create_app("messages").await;
    let chat = app.create_chat(&token).await;
    let path = format!("/applications/{token}/chats/{chat}/messages");
    let r = app.post(&path, json!({"body": "flat body"})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"number": 1}));
    let r = app
        .post(&path, json!({"message": {"body": "wrapped body"}}))
        .await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"number": 2}));

    let r = app
        .put(
            &format!("{path}/1"),
            json!({"message": {"body": "edited wrapped"}}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body"], "edited wrapped");
    let r = app
        .put(&format!("{path}/2"), json!({"body": "edited flat"}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["body"], "edited flat");

    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, chat).await,
        [
            (1, "edited wrapped".to_string()),
            (2, "edited flat".to_string())
        ]
    );
}

#[tokio::test]
async fn every_validation_applies_to_both_shapes_and_ambiguous_bodies_are_422() {
    let app = spawn_app().await;
    let token = app.create_app("validation").await;
    let chat = app.create_chat(&token).await;
    let messages = format!("/applications/{token}/chats/{chat}/messages");

    // The same invalid input, flat and wrapped: the same status and error.
    let long = "x".repeat(256);
    for (path, flat, wrapped) in [
        (
            "/applications".to_string(),
            json!({"name": "  "}),
            json!({"application": {"name": "  "}}),
        ),
        (
            "/applications".to_string(),
            json!({"name": long}),
            json!({"application": {"name": long}}),
        ),
        (
            "/applications".to_string(),
            json!({"name": 7}),
            json!({"application": {"name": 7}}),
        ),
        (
            "/applications".to_string(),
            json!({}),
            json!({"application": {}}),
        ),
        (
            messages.clone(),
            json!({"body": ""}),
            json!({"message": {"body": ""}}),
        ),
        (
            messages.clone(),
            json!({"body": false}),
            json!({"message": {"body": false}}),
        ),
        (
            messages.clone(),
            json!({"body": null}),
            json!({"message": {"body": null}}),
        ),
    ] {
        let flat_error =
            error_of(app.post(&path, flat.clone()).await, 422, &flat.to_string()).await;
        let wrapped_error = error_of(
            app.post(&path, wrapped.clone()).await,
            422,
            &wrapped.to_string(),
        )
        .await;
        // The same error; only the field's pointer starts with the wrapper.
        let wrapper = wrapped.as_object().unwrap().keys().next().unwrap();
        assert_eq!(
            flat_error,
            wrapped_error.replacen(&format!("`/{wrapper}/"), "`/", 1),
            "{flat} and {wrapped}: the same error"
        );
    }

    // Both shapes at once, the wrapper with extra keys, a wrapper that is
    // not an object, or the wrong resource's wrapper: 422 with a clear word.
    for (path, body, says) in [
        (
            "/applications",
            json!({"name": "a", "application": {"name": "b"}}),
            "not both",
        ),
        (
            "/applications",
            json!({"application": {"name": "b"}, "extra": 1}),
            "not both",
        ),
        ("/applications", json!({"application": "b"}), "application"),
        ("/applications", json!({"application": null}), "application"),
        (
            "/applications",
            json!({"message": {"body": "b"}}),
            "`/name`: required",
        ),
    ] {
        let error = error_of(app.post(path, body.clone()).await, 422, &body.to_string()).await;
        assert!(error.contains(says), "{body}: {error}");
    }
    for body in [
        json!({"body": "a", "message": {"body": "b"}}),
        json!({"message": {"body": "b"}, "chat": 1}),
        json!({"message": ["b"]}),
    ] {
        let error = error_of(
            app.post(&messages, body.clone()).await,
            422,
            &body.to_string(),
        )
        .await;
        assert!(!error.is_empty(), "{body}");
    }
    let r = app
        .put(
            &format!("/applications/{token}"),
            json!({"name": "a", "application": {"name": "b"}}),
        )
        .await;
    assert_eq!(r.status(), 422);

    app.flush().await;
    assert_eq!(app.count("applications").await, 1, "nothing was written");
    assert_eq!(app.count("messages").await, 0, "nothing was written");
}

async fn search_with(
    app: &TestApp,
    token: &str,
    chat: i64,
    params: &[(&str, &str)],
) -> reqwest::Response {
    app.client
        .get(app.url(&format!(
            "/applications/{token}/chats/{chat}/messages/search"
        )))
        .query(params)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn search_accepts_query_as_another_name_for_q() {
    let app = spawn_app().await;
    let token = app.create_app("search").await;
    let chat = app.create_chat(&token).await;
    app.create_message(&token, chat, "the orange elephant")
        .await;
    app.create_message(&token, chat, "a grey mouse").await;
    app.flush().await;

    let hits = |r: Value| -> Vec<i64> {
        r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["number"].as_i64().unwrap())
            .collect()
    };
    for params in [
        vec![("q", "elephant")],
        vec![("query", "elephant")],
        vec![("q", "elephant"), ("query", "elephant")],
    ] {
        let r = search_with(&app, &token, chat, &params).await;
        assert_eq!(r.status(), 200, "{params:?}");
        assert_eq!(hits(r.json().await.unwrap()), [1], "{params:?}");
    }
    let error = error_of(
        search_with(&app, &token, chat, &[("q", "elephant"), ("query", "mouse")]).await,
        422,
        "q and query differ",
    )
    .await;
    assert!(error.contains("q and query"), "{error}");
    let error = error_of(search_with(&app, &token, chat, &[]).await, 422, "neither").await;
    assert!(error.contains("required"), "{error}");
    error_of(
        search_with(&app, &token, chat, &[("query", "   ")]).await,
        422,
        "a blank query",
    )
    .await;
}
