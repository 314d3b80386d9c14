//! Every timestamp of every object is RFC 3339 UTC with six fractional
//! digits (microseconds), whichever path produced it: buffered in Redis,
//! flushed to MariaDB, edited, listed, or shown to the operator.

use serde_json::{Value, json};

use crate::helpers::spawn_app_with;

const KEY: &str = "test-operator-key-timestamps";

/// Every `*_at` string in `v`, with its JSON path.
fn timestamps(v: &Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                let p = format!("{path}/{k}");
                match v {
                    Value::String(s) if k.ends_with("_at") => out.push((p, s.clone())),
                    _ => timestamps(v, &p, out),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                timestamps(v, &format!("{path}/{i}"), out);
            }
        }
        _ => {}
    }
}

/// Asserts every timestamp of `v` has microseconds and returns how many.
fn assert_micros(what: &str, v: &Value) -> usize {
    let mut found = Vec::new();
    timestamps(v, "", &mut found);
    for (path, t) in &found {
        let fraction = t
            .split_once('.')
            .and_then(|(_, rest)| rest.strip_suffix("+00:00"))
            .unwrap_or_else(|| panic!("{what}{path}: {t} is not UTC with a fraction"));
        assert!(
            fraction.len() == 6 && fraction.bytes().all(|b| b.is_ascii_digit()),
            "{what}{path}: {t} has no six-digit fraction"
        );
        chrono::DateTime::parse_from_rfc3339(t).unwrap();
    }
    found.len()
}

#[tokio::test]
async fn every_timestamp_has_microseconds_buffered_flushed_edited_and_listed() {
    let app = spawn_app_with(|c| c.admin_api_key = Some(KEY.into())).await;
    let r = app.post("/applications", json!({ "name": "µs" })).await;
    let created: Value = r.json().await.unwrap();
    assert_eq!(assert_micros("created application", &created), 2);
    let t = created["token"].as_str().unwrap().to_string();
    let c = app.create_chat(&t).await;
    app.create_message(&t, c, "hello").await;
    let chat_path = format!("/applications/{t}/chats/{c}");
    let message_path = format!("{chat_path}/messages/1");

    // Buffered: read from the record in Redis.
    let buffered_chat = app.get_json(&chat_path).await;
    let buffered_message = app.get_json(&message_path).await;
    assert_eq!(assert_micros("buffered chat", &buffered_chat), 2);
    assert_eq!(assert_micros("buffered message", &buffered_message), 2);

    // Flushed: read from MariaDB, the same instants to the microsecond.
    app.flush().await;
    let flushed_chat = app.get_json(&chat_path).await;
    let flushed_message = app.get_json(&message_path).await;
    assert_micros("flushed chat", &flushed_chat);
    assert_micros("flushed message", &flushed_message);
    assert_eq!(flushed_chat["created_at"], buffered_chat["created_at"]);
    assert_eq!(
        flushed_message["created_at"],
        buffered_message["created_at"]
    );

    // Edited.
    let edited: Value = app
        .put(&message_path, json!({ "body": "edited" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(assert_micros("edited message", &edited), 2);
    assert_eq!(edited["created_at"], buffered_message["created_at"]);
    let renamed: Value = app
        .put(&format!("/applications/{t}"), json!({ "name": "renamed" }))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(assert_micros("renamed application", &renamed), 2);

    // Listed, by the tenant and by the operator.
    for path in [
        format!("/applications/{t}/chats"),
        format!("{chat_path}/messages"),
        format!("/applications/{t}"),
    ] {
        assert!(
            assert_micros(&path, &app.get_json(&path).await) >= 2,
            "{path}"
        );
    }
    for path in ["/applications", "/admin/chats", "/admin/messages"] {
        let page: Value = app
            .client
            .get(app.url(path))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(assert_micros(path, &page) >= 2, "{path}: {page}");
    }
}
