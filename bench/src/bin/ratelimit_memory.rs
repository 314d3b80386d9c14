//! Memory of the rate limiter's keyed state: resident memory (VmRSS, KiB)
//! before, after 100,000 distinct IPs, and after pruning.
//!
//! Run: `cargo run --release -p chat-api-bench --bin ratelimit_memory`

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use chat_api::http::ratelimit::{RateLimit, prune};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    // 600/min with a burst of 100, as the service's defaults; one request per
    // IP leaves a bucket that refills in 100 ms.
    let limit = RateLimit::new(600, 100, Default::default(), 64);
    let limiter = limit.limiter().expect("enabled");
    let before = rss_kib();
    for i in 0..100_000u32 {
        let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let _ = limiter.check_key(&ip);
    }
    let filled = rss_kib();
    println!("keys tracked after 100000 IPs: {}", limiter.len());
    std::thread::sleep(Duration::from_millis(200));
    let left = prune(&limiter);
    let pruned = rss_kib();
    println!("keys tracked after pruning:    {left}");
    println!(
        "RSS before: {before} KiB; after 100000 IPs: {filled} KiB (+{} KiB); after pruning: {pruned} KiB",
        filled.saturating_sub(before)
    );
}
