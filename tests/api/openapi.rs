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
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"));
    // The page shows the served spec, tags in order (not poem-openapi's).
    let (tenant, admin) = (
        html.find("\"name\": \"Applications\""),
        html.find("\"name\": \"Admin\""),
    );
    assert!(tenant.is_some() && tenant < admin, "Applications first");
}

/// Every operation's documented statuses, held to this table: a change to
/// either side is deliberate. No 500 anywhere; 413 and 415 only with a body;
/// 401 only on the operator surface; 409 only on application creates (the
/// only ones that hold an `Idempotency-Key` in progress).
#[test]
fn each_operation_documents_exactly_the_statuses_it_can_answer() {
    const LOOKUP: &[&str] = &["404", "429", "503"];
    const LISTING: &[&str] = &["404", "422", "429", "503"];
    const BODY_CREATE: &[&str] = &["400", "404", "409", "413", "415", "422", "429", "503"];
    const MESSAGE_CREATE: &[&str] = &["400", "404", "413", "415", "422", "429", "503"];
    const UPDATE: &[&str] = &["400", "404", "413", "415", "422", "429", "503"];
    const OPERATOR: &[&str] = &["401", "404", "429", "503"];
    const OPERATOR_QUERY: &[&str] = &["401", "404", "422", "429", "503"];
    let table: &[(&str, &str, &str, &[&str])] = &[
        ("post", "/api/v1/applications", "201", BODY_CREATE),
        ("get", "/api/v1/applications", "200", OPERATOR_QUERY),
        ("get", "/api/v1/applications/{token}", "200", LOOKUP),
        ("put", "/api/v1/applications/{token}", "200", UPDATE),
        ("delete", "/api/v1/applications/{token}", "204", LOOKUP),
        (
            "post",
            "/api/v1/applications/{token}/chats",
            "201",
            &["404", "422", "429", "503"],
        ),
        ("get", "/api/v1/applications/{token}/chats", "200", LISTING),
        (
            "get",
            "/api/v1/applications/{token}/chats/{number}",
            "200",
            LOOKUP,
        ),
        (
            "delete",
            "/api/v1/applications/{token}/chats/{number}",
            "204",
            LOOKUP,
        ),
        (
            "get",
            "/api/v1/applications/{token}/chats/{number}/events",
            "200",
            LISTING,
        ),
        (
            "get",
            "/api/v1/applications/{token}/chats/{number}/messages/search",
            "200",
            LISTING,
        ),
        (
            "post",
            "/api/v1/applications/{token}/chats/{number}/messages",
            "201",
            MESSAGE_CREATE,
        ),
        (
            "get",
            "/api/v1/applications/{token}/chats/{number}/messages",
            "200",
            LISTING,
        ),
        (
            "get",
            "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
            "200",
            LOOKUP,
        ),
        (
            "put",
            "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
            "200",
            UPDATE,
        ),
        (
            "delete",
            "/api/v1/applications/{token}/chats/{number}/messages/{message_number}",
            "204",
            LOOKUP,
        ),
        ("get", "/health/live", "200", &[]),
        ("get", "/health/ready", "200", &["503"]),
        ("get", "/api/v1/admin/queues", "200", OPERATOR),
        ("get", "/api/v1/admin/dead-letters", "200", OPERATOR_QUERY),
        (
            "delete",
            "/api/v1/admin/dead-letters",
            "200",
            OPERATOR_QUERY,
        ),
        (
            "post",
            "/api/v1/admin/dead-letters/replay",
            "200",
            &["400", "401", "404", "413", "415", "422", "429", "503"],
        ),
        ("post", "/api/v1/admin/flush", "200", OPERATOR),
        ("get", "/api/v1/admin/chats", "200", OPERATOR_QUERY),
        ("get", "/api/v1/admin/messages", "200", OPERATOR_QUERY),
    ];
    let spec: serde_json::Value = serde_json::from_str(&chat_api::http::spec_json()).unwrap();
    let mut seen = 0;
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let mut documented: Vec<&str> = op["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            documented.sort();
            let Some((_, _, success, errors)) =
                table.iter().find(|(m, p, _, _)| m == method && p == path)
            else {
                panic!("{method} {path} is not in the table");
            };
            let mut expected = vec![*success];
            expected.extend_from_slice(errors);
            expected.sort();
            assert_eq!(documented, expected, "{method} {path}");
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        table.len(),
        "every operation in the table is in the spec"
    );
    let tags: Vec<&str> = spec["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tags,
        ["Applications", "Chats", "Messages", "Health", "Admin"]
    );
}
