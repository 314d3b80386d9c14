/// The committed spec must match the code: run `cargo run -- openapi` after
/// changing the API.
#[test]
fn committed_openapi_spec_is_up_to_date() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json"))
            .expect("openapi/openapi.json exists");
    let current = chat_api::http::spec_json() + "\n";
    assert!(
        committed == current,
        "openapi/openapi.json is out of date: run `cargo run -- openapi` and commit the result"
    );
}

#[tokio::test]
async fn the_spec_and_swagger_ui_are_served() {
    let app = crate::helpers::spawn_app().await;
    let spec: serde_json::Value = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        spec["paths"]["/api/v1/applications/{token}/chats/{number}/messages"]["post"].is_object()
    );
    let docs = app
        .client
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.unwrap().contains("swagger"));
}
