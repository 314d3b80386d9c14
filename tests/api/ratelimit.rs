//! The per-IP rate limit.

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn the_burst_passes_then_429_with_headers() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 5;
    })
    .await;
    for i in 0..5 {
        let r = app.get("/applications").await;
        assert_eq!(r.status(), 200, "request {i} is in the burst");
        assert_eq!(r.headers()["x-ratelimit-limit"], "60");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (4 - i).to_string()
        );
    }
    let r = app.get("/applications").await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=1).contains(&retry),
        "one request per second refills: {retry}"
    );
    assert_eq!(r.headers()["x-ratelimit-limit"], "60");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("rate limit"));

    // Probes are never limited; the docs and the spec are.
    let live = app
        .client
        .get(format!("{}/health/live", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let spec = app
        .client
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(spec.status(), 429);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 3;
    })
    .await;
    for i in 0..3 {
        let r = app
            .client
            .get(app.url("/applications"))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = app
        .client
        .get(app.url("/applications"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        429,
        "a new X-Forwarded-For does not buy a new bucket"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_client_ip_has_its_own_bucket() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 2;
        c.trusted_proxies = chat_api::config::TrustedProxies(vec!["127.0.0.1/32".parse().unwrap()]);
    })
    .await;
    let get = |xff: &'static str| {
        app.client
            .get(app.url("/applications"))
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 200);
    assert_eq!(get("203.0.113.1").await.unwrap().status(), 429);
    assert_eq!(
        get("203.0.113.2").await.unwrap().status(),
        200,
        "another client is limited independently"
    );
    // The client's own spoofed entry on the left is not believed: the right-most
    // untrusted hop (added by our proxy) is the client.
    assert_eq!(
        get("198.51.100.9, 203.0.113.1").await.unwrap().status(),
        429
    );
}

#[test]
fn pruning_forgets_idle_ips() {
    use chat_api::http::ratelimit::{RateLimit, prune};
    let limit = RateLimit::new(60_000, 10, Default::default());
    let limiter = limit.limiter().unwrap();
    for i in 0..10_000u32 {
        let ip = std::net::IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        limiter.check_key(&ip).unwrap();
    }
    assert_eq!(limiter.len(), 10_000);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(
        prune(&limiter),
        0,
        "every bucket refilled, so every key is forgotten"
    );
}
