//! A measurement, not a check (ignored; it asserts nothing on time): the
//! request path's rate and Redis CPU per create with and without a
//! subscriber on the chat, and the delay from a create's 201 to its event
//! at the subscriber, rounds interleaved. Run on its own, in release:
//! `cargo test --release --test api events_measure -- --ignored --nocapture`.
use crate::helpers::spawn_app_with;
use futures::StreamExt;
use std::time::{Duration, Instant};

async fn evalsha_usec(c: &mut redis::aio::MultiplexedConnection) -> (f64, f64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let line = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .unwrap();
    let get = |k: &str| {
        line.split([':', ','])
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .unwrap()
            .parse::<f64>()
            .unwrap()
    };
    (get("calls"), get("usec"))
}

#[tokio::test]
#[ignore]
async fn request_path_and_delivery_with_and_without_a_subscriber() {
    let app = spawn_app_with(|c| {
        c.max_pending = 10_000_000;
        c.pending_high_water = 10_000_000;
        c.max_pending_per_application = Some(0);
    })
    .await;
    let token = app.create_app("m").await;
    let chat = app.create_chat(&token).await;
    let mut c = app.redis_conn().await;
    let n = 3000usize;
    let body = "x".repeat(100);
    for round in 0..6 {
        let subscribed = round % 2 == 1;
        let mut reader = None;
        if subscribed {
            let r = app
                .client
                .get(app.url(&format!("/applications/{token}/chats/{chat}/events")))
                .send()
                .await
                .unwrap();
            let mut s = r.bytes_stream();
            reader = Some(tokio::spawn(async move {
                let mut seen: std::collections::HashMap<i64, Instant> = Default::default();
                let mut buf = String::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while seen.len() < n {
                    let Ok(Some(Ok(b))) = tokio::time::timeout_at(deadline, s.next()).await else {
                        break;
                    };
                    let now = Instant::now();
                    buf.push_str(std::str::from_utf8(&b).unwrap());
                    while let Some(i) = buf.find("\n\n") {
                        let frame: String = buf.drain(..i + 2).collect();
                        if let Some(d) = frame.lines().find_map(|l| l.strip_prefix("data: ")) {
                            let v: serde_json::Value = serde_json::from_str(d).unwrap();
                            if let Some(num) = v["number"].as_i64() {
                                seen.insert(num, now);
                            }
                        }
                    }
                }
                seen
            }));
        }
        let (calls0, usec0) = evalsha_usec(&mut c).await;
        let t = Instant::now();
        let mut created = Vec::with_capacity(n);
        let futs = futures::stream::iter(0..n)
            .map(|_| {
                let app = &app;
                let token = &token;
                let body = &body;
                async move {
                    let num = app.create_message(token, chat, body).await;
                    (num, Instant::now())
                }
            })
            .buffer_unordered(16);
        futures::pin_mut!(futs);
        let mut lat = Vec::new();
        let mut seen: std::collections::HashMap<i64, Instant> = Default::default();
        while let Some(x) = futs.next().await {
            created.push(x);
        }
        let secs = t.elapsed().as_secs_f64();
        let (calls1, usec1) = evalsha_usec(&mut c).await;
        if let Some(r) = reader {
            seen = r.await.unwrap();
            for (num, at) in &created {
                if let Some(s) = seen.get(num) {
                    lat.push(s.saturating_duration_since(*at).as_secs_f64() * 1000.0);
                }
            }
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }
        let p = |q: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() as f64 - 1.0) * q) as usize]
            }
        };
        println!(
            "round {round} subscribed={subscribed}: {n} creates in {secs:.2}s ({:.0}/s); evalsha calls {} usec/create {:.2}; events {} ; 201->event p50 {:.2} ms p99 {:.2} ms max {:.2}",
            n as f64 / secs,
            calls1 - calls0,
            (usec1 - usec0) / n as f64,
            seen.len(),
            p(0.5),
            p(0.99),
            p(1.0)
        );
    }
}
