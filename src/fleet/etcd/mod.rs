//! A synchronous etcd v3 client over its HTTP/JSON gateway (`/v3/...` POSTs) with ureq: no
//! gRPC, no async runtime. Several endpoints: a request that cannot reach one (connection,
//! timeout, 5xx) goes to the next, and the one that answered is tried first next time.
//! See `/v3/` quirks in [`wire`].

mod watch;
pub mod wire;

pub use watch::{watch_prefix, WatchEnd};
pub use wire::{Event, Kv};

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::sys::prometheus::{Counters, Histogram};
use crate::sys::sync::LockUnpoisoned;
use crate::tls::ClientTrust;

#[derive(Debug)]
pub enum EtcdError {
    /// No endpoint answered: each one's failure.
    Unreachable(String),
    /// etcd answered with an error (`code` is gRPC's: 5 not found, 9 failed precondition...).
    Refused { code: i64, message: String },
    /// The answer is not what the gateway sends.
    Malformed(String),
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "etcd is unreachable: {why}"),
            Self::Refused { code, message } => write!(f, "etcd refused (code {code}): {message}"),
            Self::Malformed(why) => write!(f, "etcd answered something unexpected: {why}"),
        }
    }
}

impl std::error::Error for EtcdError {}

impl EtcdError {
    /// The `kind` label of `osx_builder_fleet_etcd_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unreachable(_) => "unreachable",
            Self::Refused { .. } => "refused",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A request to a member on the LAN takes milliseconds; seconds mean a member that hangs
/// or an election (each endpoint gets [`REQUEST_TIMEOUT`] before the next is tried).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What `/metrics` shows of the requests to etcd (watch streams are not requests: they
/// last up to their lifetime by design).
pub struct EtcdStats {
    pub latency: Mutex<Histogram>,
    pub errors: Counters,
}

impl Default for EtcdStats {
    fn default() -> Self {
        Self {
            latency: Mutex::new(Histogram::new(LATENCY_BUCKETS)),
            errors: Counters::new("kind", &["unreachable", "refused", "malformed"]),
        }
    }
}

pub struct Client {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// Watches: long POSTs, with a longer read deadline.
    watch_agent: ureq::Agent,
    current: AtomicUsize,
    pub stats: EtcdStats,
}

/// How long one request may take before the next endpoint is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Client {
    /// `endpoints`: client URLs such as `http://10.0.0.1:2379`; https ones use `trust`.
    pub fn new(endpoints: Vec<String>, trust: Option<&ClientTrust>) -> Self {
        let endpoints = endpoints
            .into_iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect();
        let build = |recv: Duration| {
            let config = ureq::Agent::config_builder()
                .timeout_connect(Some(CONNECT_TIMEOUT))
                .timeout_resolve(Some(CONNECT_TIMEOUT))
                .timeout_recv_response(Some(REQUEST_TIMEOUT))
                .timeout_recv_body(Some(recv))
                .timeout_send_body(Some(REQUEST_TIMEOUT))
                .http_status_as_error(false)
                .build();
            match trust {
                Some(trust) => trust.agent(config),
                None => config.new_agent(),
            }
        };
        Self {
            endpoints,
            agent: build(REQUEST_TIMEOUT),
            watch_agent: build(watch::STREAM_LIFETIME + Duration::from_secs(5)),
            current: AtomicUsize::new(0),
            stats: EtcdStats::default(),
        }
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// POSTs `body` to `path` on the first endpoint that answers; an etcd error answer is
    /// [`EtcdError::Refused`].
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let started = Instant::now();
        let result = self.each_endpoint(|base| {
            let response = self
                .agent
                .post(format!("{base}{path}"))
                .header("Content-Type", "application/json")
                .send(body.to_string().as_bytes())
                .map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let bytes = response
                .into_body()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()
                .map_err(|e| e.to_string())?;
            if status >= 500 {
                // No leader, or this member is cut off: another one may answer.
                return Err(format!(
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            Ok(serde_json::from_slice::<Value>(&bytes).map_err(|e| {
                EtcdError::Malformed(format!("{path} answered HTTP {status}, not JSON: {e}"))
            }))
        });
        self.stats
            .latency
            .lock_unpoisoned()
            .observe(started.elapsed().as_secs_f64());
        let result = result.and_then(|parsed| parsed).and_then(wire::checked);
        if let Err(err) = &result {
            self.stats.errors.add(err.kind());
        }
        result
    }

    /// Runs `attempt` against each endpoint from the last good one on, until one does not
    /// fail at the transport level.
    fn each_endpoint<T>(
        &self,
        mut attempt: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for step in 0..n {
            let index = (first + step) % n;
            let base = &self.endpoints[index];
            match attempt(base) {
                Ok(value) => {
                    self.current.store(index, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(why) => failures.push(format!("{base}: {why}")),
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    /// `GET /health` of each endpoint until one says healthy: the start-up check.
    pub fn health(&self) -> Result<(), EtcdError> {
        self.each_endpoint(|base| {
            let response = self
                .agent
                .get(format!("{base}/health"))
                .call()
                .map_err(|e| e.to_string())?;
            let body = response
                .into_body()
                .read_to_string()
                .map_err(|e| e.to_string())?;
            if body.contains("\"true\"") {
                Ok(())
            } else {
                Err(format!("not healthy: {}", body.trim()))
            }
        })
    }

    pub fn grant(&self, ttl: u64) -> Result<(i64, i64), EtcdError> {
        wire::lease_grant(&self.call("/v3/lease/grant", &serde_json::json!({ "TTL": ttl }))?)
    }

    /// The lease's new TTL, or `None` when etcd no longer knows it (it expired).
    pub fn keepalive(&self, lease: i64) -> Result<Option<i64>, EtcdError> {
        let answer = self.call(
            "/v3/lease/keepalive",
            &serde_json::json!({ "ID": lease.to_string() }),
        )?;
        Ok(wire::keepalive_ttl(&answer))
    }

    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call(
            "/v3/lease/revoke",
            &serde_json::json!({ "ID": lease.to_string() }),
        )
        .map(drop)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let answer = self.call("/v3/kv/range", &wire::range_request(key, false))?;
        Ok(wire::kvs(&answer)?.into_iter().next())
    }

    /// Every key under `prefix`, with the store's revision they were read at.
    pub fn range_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let answer = self.call("/v3/kv/range", &wire::range_request(prefix, true))?;
        Ok((wire::kvs(&answer)?, wire::header_revision(&answer)))
    }

    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/kv/put", &wire::put_request(key, value, lease))
            .map(drop)
    }

    pub fn delete(&self, key: &[u8]) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/deleterange",
            &serde_json::json!({ "key": wire::b64(key) }),
        )
        .map(drop)
    }

    /// Puts `value` if `key` does not exist: `Ok(None)` when this call created it, else
    /// the key that was there.
    pub fn create_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        lease: i64,
    ) -> Result<Option<Kv>, EtcdError> {
        self.put_if(key, 0, value, lease)
    }

    /// Compare-and-swap: puts `value` if `key`'s mod revision is `expected` (0: absent).
    /// `Ok(None)` when it did; else what the key now holds (`Some` of it, or an empty
    /// [`Kv`] with revision 0 when it is gone).
    pub fn put_if(
        &self,
        key: &[u8],
        expected: i64,
        value: &[u8],
        lease: i64,
    ) -> Result<Option<Kv>, EtcdError> {
        let answer = self.call("/v3/kv/txn", &wire::txn_put_if(key, expected, value, lease))?;
        let (succeeded, current) = wire::txn_outcome(&answer)?;
        Ok((!succeeded).then(|| current.unwrap_or_else(|| absent(key))))
    }

    /// Deletes `key` if its mod revision is still `expected`; true when it did.
    pub fn delete_if(&self, key: &[u8], expected: i64) -> Result<bool, EtcdError> {
        let answer = self.call("/v3/kv/txn", &wire::txn_delete_if(key, expected))?;
        Ok(wire::txn_outcome(&answer)?.0)
    }

    pub(crate) fn watch_agent(&self) -> &ureq::Agent {
        &self.watch_agent
    }
}

fn absent(key: &[u8]) -> Kv {
    Kv {
        key: key.to_vec(),
        value: Vec::new(),
        create_revision: 0,
        mod_revision: 0,
        lease: 0,
    }
}
