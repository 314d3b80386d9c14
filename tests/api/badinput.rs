//! Hostile and malformed input: each gets a clear 4xx JSON error and changes
//! nothing.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

async fn raw_post(app: &TestApp, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = app
        .client
        .post(app.url(path))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn rows(app: &TestApp) -> (i64, i64) {
    app.flush().await;
    (app.count("applications").await, app.count("messages").await)
}

#[tokio::test]
async fn malformed_bodies_get_a_4xx_and_change_nothing() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    let path = format!("/applications/{t}/chats/{c}/messages");
    let before = rows(&app).await;

    let ten_mib = format!("{{\"body\": \"{}\"}}", "x".repeat(10 << 20)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("10 MiB body", ten_mib, 413),
        ("invalid UTF-8", b"{\"body\": \"\xff\xfe\"}".to_vec(), 400),
        (
            "raw NUL byte in JSON text",
            b"{\"body\": \"a\0b\"}".to_vec(),
            400,
        ),
        (
            "deeply nested JSON",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
            400,
        ),
        (
            "nested object where a string belongs",
            br#"{"body": {"a": {"b": {"c": 1}}}}"#.to_vec(),
            422,
        ),
        (
            "a number where a string belongs",
            br#"{"body": 12}"#.to_vec(),
            422,
        ),
        (
            "a number outside i64",
            br#"{"body": 123456789012345678901234567890}"#.to_vec(),
            422,
        ),
        ("a boolean", br#"{"body": false}"#.to_vec(), 422),
        ("null", br#"{"body": null}"#.to_vec(), 422),
        ("an array", br#"["body"]"#.to_vec(), 422),
        ("empty", Vec::new(), 422),
    ];
    for (what, body, expected) in cases {
        let (status, err) = raw_post(&app, &path, body).await;
        assert_eq!(status, expected, "{what}");
        assert!(
            err["error"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: a JSON error with a message"
        );
    }
    let r = app.post("/applications", json!({ "name": false })).await;
    assert_eq!(r.status(), 422, "a boolean is not a name");
    let r = app
        .client
        .post(app.url(&path))
        .body("body=hello")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(rows(&app).await, before, "nothing was written");
}

#[tokio::test]
async fn out_of_range_numbers_and_path_tricks_are_4xx() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    app.create_chat(&t).await;
    let before = rows(&app).await;
    for path in [
        format!("/applications/{t}/chats/99999999999999999999"),
        format!("/applications/{t}/chats/-1"),
        format!("/applications/{t}/chats/0"),
        format!("/applications/{t}/chats/1/messages/99999999999999999999"),
        format!("/applications/{t}/chats/1/messages/-9223372036854775808"),
        format!("/applications/{t}%2F..%2F..%2Fchats/1"),
        format!("/applications/..%2F{t}/chats"),
        "/applications/%2e%2e/chats".to_string(),
        format!("/applications/{t}/chats/1%20OR%201=1"),
    ] {
        let r = app.get(&path).await;
        assert_eq!(r.status(), 404, "{path}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    for q in [
        "page=0",
        "page=-5",
        "per_page=0",
        "per_page=-1",
        "page=1e30",
        "page=99999999999999999999",
        "per_page=1.5",
    ] {
        let r = app.get(&format!("/applications/{t}/chats?{q}")).await;
        assert_eq!(r.status(), 422, "{q}");
    }
    let r = app
        .post(
            &format!("/applications/{t}/chats/99999999999999999999/messages"),
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(rows(&app).await, before);
}

#[tokio::test]
async fn sql_and_filter_looking_text_is_just_text() {
    let app = spawn_app().await;
    let nasty =
        "'; DROP TABLE applications; -- \" OR 1=1 /* chat_id = 1 OR application_id > 0 */ \\x00";
    let t = app.create_app(nasty).await;
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, nasty).await;
    app.flush().await;
    let a: Value = app.get_json(&format!("/applications/{t}")).await;
    assert_eq!(a["name"], nasty);
    let m: Value = app
        .get_json(&format!("/applications/{t}/chats/{c}/messages/1"))
        .await;
    assert_eq!(m["body"], nasty);
    let r = app
        .client
        .get(app.url(&format!("/applications/{t}/chats/{c}/messages/search")))
        .query(&[("q", nasty)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.count("applications").await,
        1,
        "the table is still there, with one row"
    );
}
