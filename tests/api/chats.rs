use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test]
async fn chats_are_numbered_per_application_and_readable_before_the_flush() {
    let app = spawn_app().await;
    let a = app.create_app("a").await;
    let b = app.create_app("b").await;
    assert_eq!(app.create_chat(&a).await, 1);
    assert_eq!(app.create_chat(&a).await, 2);
    assert_eq!(app.create_chat(&b).await, 1);
    assert_eq!(app.count("chats").await, 0, "creation does not touch SQL");

    // Read-your-writes: the buffered chat is served (after a flush the GET triggers).
    let r = app.get(&format!("/applications/{a}/chats/2")).await;
    assert_eq!(r.status(), 200);
    let chat: Value = r.json().await.unwrap();
    assert_eq!(chat["number"], 2);
    assert_eq!(chat["messages_count"], 0);
    assert_eq!(
        crate::helpers::keys_of(&chat),
        ["created_at", "messages_count", "number", "updated_at"]
    );

    app.flush().await;
    let list: Value = app.get_json(&format!("/applications/{a}/chats")).await;
    let numbers: Vec<i64> = list["chats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["number"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    assert_eq!(
        app.get(&format!("/applications/{a}/chats/3"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/applications/{a}/chats/0"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/applications/{a}/chats/-4"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/applications/{a}/chats/abc"))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn deleting_a_chat_removes_its_messages_and_never_reuses_its_number() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c1 = app.create_chat(&t).await;
    let c2 = app.create_chat(&t).await;
    app.create_message(&t, c2, "kept").await;
    app.create_message(&t, c2, "also kept").await;
    app.flush().await;
    // A message still buffered when its chat is deleted is dropped at flush.
    app.create_message(&t, c2, "late").await;

    assert_eq!(
        app.delete(&format!("/applications/{t}/chats/{c2}"))
            .await
            .status(),
        204
    );
    assert_eq!(
        app.get(&format!("/applications/{t}/chats/{c2}"))
            .await
            .status(),
        404
    );
    assert_eq!(
        app.get(&format!("/applications/{t}/chats/{c2}/messages/1"))
            .await
            .status(),
        404
    );
    let r = app
        .post(
            &format!("/applications/{t}/chats/{c2}/messages"),
            json!({ "body": "x" }),
        )
        .await;
    assert_eq!(r.status(), 404, "no message can be added to a deleted chat");

    let report = app.flush().await;
    assert_eq!(
        report.dropped, 1,
        "the buffered message of the deleted chat is dropped and counted"
    );
    assert_eq!(app.count("messages").await, 0);

    assert_eq!(
        app.create_chat(&t).await,
        3,
        "the deleted number 2 is not reused"
    );
    assert_eq!(
        app.get(&format!("/applications/{t}/chats/{c1}"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn deleting_an_application_drops_its_buffered_records() {
    let app = spawn_app().await;
    let t = app.create_app("a").await;
    let c = app.create_chat(&t).await;
    for i in 0..5 {
        app.create_message(&t, c, &format!("m{i}")).await;
    }
    // Chat 1 is buffered: the delete removes the application first.
    assert_eq!(
        app.delete(&format!("/applications/{t}")).await.status(),
        204
    );
    let report = app.flush().await;
    assert_eq!(report.dropped, 6, "one chat and five messages dropped");
    assert_eq!(app.count("chats").await, 0);
    assert_eq!(app.count("messages").await, 0);
    let r = app
        .post(&format!("/applications/{t}/chats"), json!({}))
        .await;
    assert_eq!(r.status(), 404);
}
