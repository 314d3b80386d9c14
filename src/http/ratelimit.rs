//! Per-client-IP rate limit, a step of the edge ([`crate::http::edge`])
//! around `governor`'s keyed GCRA limiter (`RATE_LIMIT_PER_MINUTE`, `RATE_LIMIT_BURST`).
//!
//! - The client IP is the socket's peer address. `X-Forwarded-For` is read
//!   only when the peer is a trusted proxy (`TRUSTED_PROXIES`). The chain is
//!   every `X-Forwarded-For` line of the request, in order, joined by commas
//!   (RFC 9110 §5.3: several lines of a list header are one list), and each
//!   proxy appends its hop at the end. So the chain is walked from the right,
//!   and the client is the right-most address that is not itself a trusted
//!   proxy: the left-most entries are whatever the client wrote, so they are
//!   never believed on their own. An entry that is not an IP address stops
//!   the walk at the last address believed.
//! - IPv6 clients are keyed by their prefix of `RATE_LIMIT_IPV6_PREFIX` bits
//!   (default 64): one host usually controls a whole /64 (RFC 6177, RFC 8981
//!   temporary addresses), so the full address would let it pick a fresh
//!   bucket for every request. IPv4 clients are keyed by the full address.
//! - Past the limit: 429 with `Retry-After` (whole seconds, rounded up),
//!   the `X-RateLimit-*` headers and a JSON error. Allowed responses carry
//!   the headers as well. They describe one bucket, so they agree with each
//!   other: `X-RateLimit-Limit` is its size (`RATE_LIMIT_BURST`),
//!   `X-RateLimit-Remaining` the requests left in it, and `X-RateLimit-Reset`
//!   the whole seconds until it is full again at `RATE_LIMIT_PER_MINUTE`
//!   (the names of the IETF draft "RateLimit header fields for HTTP",
//!   draft-ietf-httpapi-ratelimit-headers, with GCRA's bucket as the quota).
//! - `/health/*` and `/metrics` are not limited; everything else is,
//!   Swagger UI and `/openapi.json` included.
//! - The keyed state grows with every IP seen; [`prune`] (run every minute)
//!   forgets the IPs whose bucket is full again and frees the memory.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use poem::{IntoResponse, Request, Response};

use crate::config::TrustedProxies;
use crate::http::error::{ApiError, ErrorBody};

/// A limiter keyed by `K`, reporting the remaining burst on every check.
pub type LimiterBy<K> =
    RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// The keyed limiter of [`RateLimit`], by client address.
pub type KeyedLimiter = LimiterBy<IpAddr>;

/// A GCRA limiter keyed by `K`, of `per_minute` with bursts of `burst` (at
/// least 1), reporting the remaining burst on every check; `None` when
/// `per_minute` is 0 (disabled). Shared by [`RateLimit`] and [`SearchRate`].
fn keyed_limiter<K>(per_minute: u32, burst: u32) -> Option<Arc<LimiterBy<K>>>
where
    K: std::hash::Hash + Eq + Clone,
{
    NonZeroU32::new(per_minute).map(|rate| {
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Arc::new(
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>(),
        )
    })
}

/// The limit ([`RateLimit::admit`], [`RateLimit::stamp`]); `None` limiter
/// means disabled (`RATE_LIMIT_PER_MINUTE=0`).
#[derive(Clone)]
pub struct RateLimit {
    limiter: Option<Arc<KeyedLimiter>>,
    per_minute: u32,
    burst: u32,
    trusted: Arc<TrustedProxies>,
    ipv6_prefix: u8,
}

impl RateLimit {
    /// A limit of `per_minute` requests per client with bursts of `burst`
    /// (at least 1); `per_minute == 0` disables it. A client is an IPv4
    /// address or an IPv6 prefix of `ipv6_prefix` bits (clamped to 128).
    pub fn new(per_minute: u32, burst: u32, trusted: TrustedProxies, ipv6_prefix: u8) -> Self {
        let limiter = keyed_limiter(per_minute, burst);
        Self {
            limiter,
            per_minute,
            burst: burst.max(1),
            trusted: Arc::new(trusted),
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    /// The bucket key of `ip`: an IPv4 address as is, an IPv6 address with
    /// every bit past the configured prefix cleared.
    pub fn bucket_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => ipnet::Ipv6Net::new(v6, self.ipv6_prefix)
                .map(|net| IpAddr::V6(net.network()))
                .unwrap_or(ip),
        }
    }

    /// Whole seconds, rounded up, until a bucket missing `used` requests is
    /// full again (one request comes back every `60 / per_minute` s).
    fn refill_secs(&self, used: f64) -> u64 {
        (used.max(0.0) * 60.0 / f64::from(self.per_minute.max(1))).ceil() as u64
    }

    /// The limiter, for pruning and for measurements; `None` when disabled.
    pub fn limiter(&self) -> Option<Arc<KeyedLimiter>> {
        self.limiter.clone()
    }
}

/// The per-application search rate (`SEARCH_RATE_PER_MINUTE`,
/// `SEARCH_RATE_BURST`): a GCRA bucket per application id, checked by the
/// search endpoint once the token is known, so that one tenant's searches
/// cannot take the search capacity of MariaDB (or Meilisearch) from the
/// others, whichever IPs they come from. Separate from the per-IP limit,
/// which still applies.
#[derive(Clone)]
pub struct SearchRate {
    limiter: Option<Arc<AppLimiter>>,
    per_minute: u32,
    burst: u32,
}

/// The limiter of [`SearchRate`], keyed by `applications.id`.
pub type AppLimiter = LimiterBy<u64>;

impl SearchRate {
    /// `per_minute` searches per application with bursts of `burst` (at
    /// least 1); `per_minute == 0` disables it.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        let limiter = keyed_limiter(per_minute, burst);
        Self {
            limiter,
            per_minute,
            burst: burst.max(1),
        }
    }

    /// Takes one search from application `application_id`'s bucket.
    /// Errors: 429 with `Retry-After` and the bucket's `X-RateLimit-*`
    /// headers, and a JSON reason naming the per-application search rate.
    pub fn check(&self, application_id: u64) -> Result<(), ApiError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Err(not_until) = limiter.check_key(&application_id) else {
            return Ok(());
        };
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        crate::telemetry::metrics::rate_limited();
        let refill = (f64::from(self.burst - 1) * 60.0 / f64::from(self.per_minute.max(1))).ceil();
        Err(ApiError::TooManyRequests(
            poem_openapi::payload::Json(ErrorBody::new(format!(
                "search rate of this application ({} searches per minute, bursts of {}) \
                 exceeded; retry in {retry_after} s",
                self.per_minute, self.burst
            ))),
            retry_after,
            self.burst,
            0,
            (wait.as_secs_f64() + refill).ceil() as u64,
        ))
    }

    /// The limiter, for pruning; `None` when disabled.
    pub fn limiter(&self) -> Option<Arc<AppLimiter>> {
        self.limiter.clone()
    }
}

/// Forgets IPs whose bucket has refilled and returns freed memory.
/// Returns the number of IPs still tracked.
pub fn prune(limiter: &KeyedLimiter) -> usize {
    limiter.retain_recent();
    limiter.shrink_to_fit();
    limiter.len()
}

/// The client's IP: the peer, or for a trusted peer the right-most
/// untrusted address of the `X-Forwarded-For` chain (every line of the
/// header, in order, joined by commas). `None` when the peer is not a TCP
/// socket address.
pub fn client_ip(req: &Request, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.remote_addr().as_socket_addr()?.ip().to_canonical();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut chain = Vec::new();
    for line in req.headers().get_all("x-forwarded-for") {
        let Ok(line) = line.to_str() else {
            // A line that is not text cannot be read: walk only the hops
            // appended after it.
            chain.clear();
            continue;
        };
        chain.extend(line.split(',').map(str::trim).filter(|h| !h.is_empty()));
    }
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) else {
            return Some(client);
        };
        client = ip;
        if !trusted.contains(&ip) {
            return Some(ip);
        }
    }
    Some(client)
}

fn exempt(path: &str) -> bool {
    path.starts_with("/health/") || path == "/metrics"
}

/// What [`RateLimit::admit`] decided for one request.
pub enum Admission {
    /// Not limited: the limit is off, the path is exempt (`/health/*`,
    /// `/metrics`), or the peer is not a TCP address.
    Unlimited,
    /// Within the limit, with this much of the burst left.
    Allowed(u32),
    /// Over the limit: the 429 to answer instead.
    Refused(Response),
}

impl RateLimit {
    /// Before the handler: takes one request from the client's bucket.
    pub fn admit(&self, req: &Request) -> Admission {
        let Some(limiter) = &self.limiter else {
            return Admission::Unlimited;
        };
        if exempt(req.uri().path()) {
            return Admission::Unlimited;
        }
        let Some(ip) = client_ip(req, &self.trusted) else {
            return Admission::Unlimited;
        };
        match limiter.check_key(&self.bucket_of(ip)) {
            Ok(snapshot) => Admission::Allowed(snapshot.remaining_burst_capacity()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                crate::telemetry::metrics::rate_limited();
                Admission::Refused(
                    ApiError::TooManyRequests(
                        poem_openapi::payload::Json(ErrorBody::new(format!(
                            "rate limit of {} requests per minute exceeded; retry in {} s",
                            self.per_minute,
                            retry_after.max(1)
                        ))),
                        retry_after.max(1),
                        self.burst,
                        0,
                        // The wait for one request, then the rest of the bucket.
                        (wait.as_secs_f64() + (self.refill_secs(f64::from(self.burst - 1)) as f64))
                            .ceil() as u64,
                    )
                    .into_response(),
                )
            }
        }
    }

    /// After the handler: the `X-RateLimit-*` headers of a request that was
    /// [`Admission::Allowed`] with `remaining` (unless the per-application
    /// search rate answered, whose headers describe the bucket that refused).
    pub fn stamp(&self, remaining: u32, resp: &mut Response) {
        if resp.headers().contains_key("x-ratelimit-limit") {
            return;
        }
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", self.burst.into());
        h.insert("x-ratelimit-remaining", remaining.into());
        h.insert(
            "x-ratelimit-reset",
            self.refill_secs(f64::from(self.burst.saturating_sub(remaining)))
                .into(),
        );
    }
}
