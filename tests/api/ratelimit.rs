//! The per-IP rate limit.

use crate::helpers::{TestApp, spawn_app_with};

/// A limited route that answers 200 to anyone: the spec.
fn probe(app: &TestApp) -> String {
    format!("{}/openapi.json", app.address)
}

/// An app whose rate limit allows bursts of `burst` and trusts 127.0.0.1 as
/// a proxy, so that `X-Forwarded-For` names the client.
async fn behind_proxy(burst: u32) -> TestApp {
    spawn_app_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = burst;
        c.trusted_proxies = chat_api::config::TrustedProxies(vec!["127.0.0.1/32".parse().unwrap()]);
    })
    .await
}

/// GET the probe with one `X-Forwarded-For` line per item of `lines`; the
/// status.
async fn get_via(app: &TestApp, lines: &[&str]) -> u16 {
    let mut req = app.client.get(probe(app));
    for line in lines {
        req = req.header("x-forwarded-for", *line);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn the_burst_passes_then_429_with_headers() {
    let app = spawn_app_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 5;
    })
    .await;
    for i in 0..5 {
        let r = app.client.get(probe(&app)).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i} is in the burst");
        // One bucket of 5, refilled at one request a second: the headers
        // agree with each other.
        assert_eq!(r.headers()["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers()["x-ratelimit-remaining"].to_str().unwrap(),
            (4 - i).to_string()
        );
        let reset: u64 = r.headers()["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (i + 1..=i + 2).contains(&reset),
            "{} used, one back a second: full in {reset} s",
            i + 1
        );
    }
    let r = app.client.get(probe(&app)).send().await.unwrap();
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
    assert_eq!(r.headers()["x-ratelimit-limit"], "5");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    let reset: u64 = r.headers()["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (5..=6).contains(&reset),
        "an empty bucket is full in 5 s: {reset}"
    );
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
        .get(format!("{}/docs", app.address))
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
            .get(probe(&app))
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = app
        .client
        .get(probe(&app))
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
    let app = behind_proxy(2).await;
    let get = |xff: &'static str| {
        app.client
            .get(probe(&app))
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

#[tokio::test]
async fn with_several_forwarded_for_lines_the_chain_is_walked_from_the_right() {
    let app = behind_proxy(2).await;
    // Line 1 is what the client sent (forged); line 2 is the hop our trusted
    // proxy appended: the client is 203.0.113.5, whatever line 1 says.
    for forged in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(get_via(&app, &[forged, "203.0.113.5"]).await, 200);
    }
    assert_eq!(
        get_via(&app, &["198.51.100.3", "203.0.113.5"]).await,
        429,
        "a new forged first line does not buy a new bucket"
    );
    assert_eq!(
        get_via(&app, &["203.0.113.5"]).await,
        429,
        "the same client with one line shares the bucket"
    );
    // The chain is line 1 then line 2: a trusted hop on the right is skipped,
    // and the client is the right-most untrusted entry.
    assert_eq!(get_via(&app, &["203.0.113.9", "127.0.0.1"]).await, 200);
    assert_eq!(
        get_via(&app, &["198.51.100.7, 203.0.113.9", "127.0.0.1"]).await,
        200
    );
    assert_eq!(
        get_via(&app, &["198.51.100.8, 203.0.113.9"]).await,
        429,
        "a forged left-most entry in the same line is not believed either"
    );
}

#[tokio::test]
async fn ipv6_clients_in_one_64_share_a_bucket() {
    let app = behind_proxy(2).await;
    assert_eq!(get_via(&app, &["2001:db8:1:2::1"]).await, 200);
    assert_eq!(get_via(&app, &["2001:db8:1:2:ffff::9"]).await, 200);
    assert_eq!(
        get_via(&app, &["2001:db8:1:2:abcd:ef01:2345:6789"]).await,
        429,
        "a third address of the same /64 is the same client"
    );
    assert_eq!(
        get_via(&app, &["2001:db8:1:3::1"]).await,
        200,
        "another /64 is another client"
    );
    // IPv4 is keyed by the full address, mapped IPv6 included.
    assert_eq!(get_via(&app, &["192.0.2.1"]).await, 200);
    assert_eq!(get_via(&app, &["192.0.2.2"]).await, 200);
}

#[test]
fn the_ipv6_prefix_is_configurable() {
    use chat_api::http::ratelimit::RateLimit;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let by_48 = RateLimit::new(60, 1, Default::default(), 48);
    assert_eq!(by_48.bucket_of(ip("2001:db8:1:2::1")), ip("2001:db8:1::"));
    let by_128 = RateLimit::new(60, 1, Default::default(), 128);
    assert_eq!(by_128.bucket_of(ip("2001:db8::1")), ip("2001:db8::1"));
    assert_eq!(by_128.bucket_of(ip("192.0.2.1")), ip("192.0.2.1"));
}

#[test]
fn pruning_forgets_idle_ips() {
    use chat_api::http::ratelimit::{RateLimit, prune};
    let limit = RateLimit::new(60_000, 10, Default::default(), 64);
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
