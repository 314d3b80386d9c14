use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn create_get_rename_delete_an_application() {
    let app = spawn_app().await;
    let name = "Chat ✓ 漢字 Ünïcødé 😀 עברית";
    let r = app.post("/applications", json!({ "name": name })).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let token = created["token"].as_str().unwrap().to_string();
    assert!(
        token.len() >= 22
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert_eq!(created["name"], name);
    assert_eq!(created["chats_count"], 0);
    assert_eq!(
        crate::helpers::keys_of(&created),
        ["chats_count", "created_at", "name", "token", "updated_at"],
        "no database id is exposed"
    );

    let got: Value = app.get_json(&format!("/applications/{token}")).await;
    assert_eq!(
        got, created,
        "a read returns exactly what the create returned"
    );

    let r = app
        .put(
            &format!("/applications/{token}"),
            json!({ "name": "renamed" }),
        )
        .await;
    assert_eq!(r.status(), 200);
    let renamed: Value = r.json().await.unwrap();
    assert_eq!(renamed["name"], "renamed");
    assert_eq!(renamed["token"], token.as_str());

    assert_eq!(
        app.delete(&format!("/applications/{token}")).await.status(),
        204
    );
    assert_eq!(
        app.get(&format!("/applications/{token}")).await.status(),
        404
    );
    assert_eq!(
        app.delete(&format!("/applications/{token}")).await.status(),
        404
    );
    assert_eq!(app.count("applications").await, 0);
}

#[tokio::test]
async fn invalid_names_are_refused_with_422_and_nothing_is_written() {
    let app = spawn_app().await;
    for body in [
        json!({ "name": "" }),
        json!({ "name": "   " }),
        json!({ "name": "x".repeat(256) }),
        json!({}),
    ] {
        let r = app.post("/applications", body.clone()).await;
        assert_eq!(r.status(), 422, "{body}");
        let err: Value = r.json().await.unwrap();
        assert!(err["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    assert_eq!(
        app.post("/applications", json!({ "name": "é".repeat(255) }))
            .await
            .status(),
        201,
        "255 characters fit"
    );
    assert_eq!(app.count("applications").await, 1);
}

#[tokio::test]
async fn malformed_json_is_a_400_and_oversized_bodies_a_413() {
    let app = spawn_app().await;
    let r = app
        .client
        .post(app.url("/applications"))
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(
        r.json::<Value>().await.unwrap()["error"]
            .as_str()
            .unwrap()
            .contains("JSON")
    );

    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(2 << 20));
    let r = app
        .client
        .post(app.url("/applications"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    assert_eq!(app.count("applications").await, 0);
}

#[tokio::test]
async fn unknown_and_tricky_tokens_are_404() {
    let app = spawn_app().await;
    for token in [
        "nope",
        "..%2F..%2Fetc",
        "%2e%2e",
        "' OR 1=1 --",
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        let r = app.get(&format!("/applications/{token}")).await;
        assert_eq!(r.status(), 404, "{token}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
        let r = app
            .post(&format!("/applications/{token}/chats"), json!({}))
            .await;
        assert_eq!(r.status(), 404, "{token}");
    }
}

#[tokio::test]
async fn applications_are_paginated_in_creation_order() {
    let app = spawn_app_with(|c| c.public_application_list = true).await;
    for i in 0..5 {
        app.create_app(&format!("app {i}")).await;
    }
    let page: Value = app.get_json("/applications?page=2&per_page=2").await;
    let names: Vec<&str> = page["applications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app 2", "app 3"]);
    assert_eq!(
        page["meta"],
        json!({ "page": 2, "per_page": 2, "next_page": 3, "previous_page": 1 })
    );
    let last: Value = app.get_json("/applications?page=3&per_page=2").await;
    assert_eq!(last["meta"]["next_page"], Value::Null);
    let first: Value = app.get_json("/applications").await;
    assert_eq!(
        first["meta"],
        json!({ "page": 1, "per_page": 20, "next_page": null, "previous_page": null })
    );

    for q in [
        "page=0",
        "page=-1",
        "per_page=0",
        "per_page=101",
        "page=abc",
        "page=99999999999999999999",
    ] {
        let r = app.get(&format!("/applications?{q}")).await;
        assert_eq!(r.status(), 422, "{q}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/nowhere", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    let r = app
        .client
        .patch(app.url("/applications"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());
}
