//! `Idempotency-Key` on POST of applications, chats and messages: a retry
//! with the same key gets the same answer and creates nothing; the key with
//! another request is a 422.

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{post_with_key, send_with_key, spawn_app};

#[tokio::test]
async fn a_retried_create_with_the_same_key_creates_nothing_new() {
    let app = spawn_app().await;
    let base = app.address.clone();
    let token = app.create_app("idempotent").await;

    let chats = format!("/applications/{token}/chats");
    let first = post_with_key(&app, &base, &chats, "chat-key-1", json!({})).await;
    assert_eq!(first.status(), 201);
    let again = post_with_key(&app, &base, &chats, "chat-key-1", json!({})).await;
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().await.unwrap(), json!({"number": 1}));
    let other = post_with_key(&app, &base, &chats, "chat-key-2", json!({})).await;
    assert_eq!(other.json::<Value>().await.unwrap(), json!({"number": 2}));

    let messages = format!("/applications/{token}/chats/1/messages");
    for _ in 0..3 {
        let r = post_with_key(&app, &base, &messages, "msg-key-1", json!({"body": "once"})).await;
        assert_eq!(r.status(), 201);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"number": 1}));
    }
    // The same key with another body, or in another chat: 422, nothing made.
    let r = post_with_key(
        &app,
        &base,
        &messages,
        "msg-key-1",
        json!({"body": "twice?"}),
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(r.text().await.unwrap().contains("Idempotency-Key"));
    let r = post_with_key(
        &app,
        &base,
        &format!("/applications/{token}/chats/2/messages"),
        "msg-key-1",
        json!({"body": "once"}),
    )
    .await;
    assert_eq!(r.status(), 422);
    // Wrapped and flat bodies are the same request.
    let r = post_with_key(
        &app,
        &base,
        &messages,
        "msg-key-1",
        json!({"message": {"body": "once"}}),
    )
    .await;
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"number": 1}));
    // Keys are per application: the same key elsewhere is a new request.
    let token2 = app.create_app("another").await;
    app.create_chat(&token2).await;
    let r = post_with_key(
        &app,
        &base,
        &format!("/applications/{token2}/chats/1/messages"),
        "msg-key-1",
        json!({"body": "elsewhere"}),
    )
    .await;
    assert_eq!(r.status(), 201);

    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, 1).await,
        [(1, "once".to_string())]
    );
    assert_eq!(app.count("chats").await, 3);

    // Applications: the same key and name give the same application.
    let a = post_with_key(
        &app,
        &base,
        "/applications",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        json!({"name": "made once"}),
    )
    .await;
    assert_eq!(a.status(), 201);
    let a: Value = a.json().await.unwrap();
    let b = post_with_key(
        &app,
        &base,
        "/applications",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        json!({"name": "made once"}),
    )
    .await;
    assert_eq!(b.status(), 201);
    assert_eq!(b.json::<Value>().await.unwrap()["token"], a["token"]);
    let c = post_with_key(
        &app,
        &base,
        "/applications",
        "7c9e6679-7425-40de-944b-e07fc1f90ae7",
        json!({"name": "another"}),
    )
    .await;
    assert_eq!(c.status(), 422);
    assert_eq!(app.count("applications").await, 3);

    // An application create's key must be unguessable: another client that
    // guessed it would be handed this client's token.
    for guessable in [
        "1",
        "retry-2",
        "short-but-random-ish",
        "not base64 at all!!!!!!",
    ] {
        let r = post_with_key(
            &app,
            &base,
            "/applications",
            guessable,
            json!({"name": "guessable"}),
        )
        .await;
        assert_eq!(r.status(), 422, "{guessable}");
        let error = r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(error.contains("unguessable"), "{error}");
    }
    let r = post_with_key(
        &app,
        &base,
        "/applications",
        "q1W2e3R4t5Y6u7I8o9P0aSdF",
        json!({"name": "128 bits of base64url"}),
    )
    .await;
    assert_eq!(r.status(), 201);
    assert_eq!(app.count("applications").await, 4);

    // Any header value is a key; the service keeps only its digest.
    for key in ["x".repeat(4000), "has inner spaces".to_string()] {
        let first = post_with_key(&app, &base, &chats, &key, json!({})).await;
        assert_eq!(first.status(), 201);
        let again = post_with_key(&app, &base, &chats, &key, json!({})).await;
        assert_eq!(
            again.json::<Value>().await.unwrap(),
            first.json::<Value>().await.unwrap()
        );
    }
}

/// A proxy for one connection that forwards the request to `upstream`, waits
/// for the first byte of the answer (so the service did the work), then cuts
/// the client off: the answer is lost.
async fn answer_losing_proxy(upstream: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        // Read the head, then as much body as Content-Length says.
        let body_start = loop {
            let n = client.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
            if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&request[..body_start]).to_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while request.len() < body_start + length {
            let n = client.read(&mut buf).await.unwrap();
            request.extend_from_slice(&buf[..n]);
        }
        let mut service = tokio::net::TcpStream::connect(upstream).await.unwrap();
        service.write_all(&request).await.unwrap();
        let _ = service.read(&mut buf).await.unwrap();
        drop(client);
    });
    addr
}

#[tokio::test]
async fn a_create_whose_answer_was_lost_is_retried_with_its_key_and_stored_once() {
    let app = spawn_app().await;
    let token = app.create_app("lost answers").await;
    let chat = app.create_chat(&token).await;
    let path = format!("/applications/{token}/chats/{chat}/messages");
    let upstream = app.address.trim_start_matches("http://").parse().unwrap();
    let proxy = answer_losing_proxy(upstream).await;

    let lost = send_with_key(
        &app,
        &format!("http://{proxy}"),
        &path,
        "retry-me",
        json!({"body": "exactly once"}),
    )
    .await;
    assert!(lost.is_err(), "the answer was lost: {lost:?}");
    let retry = post_with_key(
        &app,
        &app.address,
        &path,
        "retry-me",
        json!({"body": "exactly once"}),
    )
    .await;
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.json::<Value>().await.unwrap(), json!({"number": 1}));

    app.flush().await;
    assert_eq!(
        app.stored_messages(&token, chat).await,
        [(1, "exactly once".to_string())]
    );
    assert_eq!(
        app.create_message(&token, chat, "next").await,
        2,
        "no number was used up twice"
    );
}
