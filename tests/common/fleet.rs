//! A fleet for the tests: a real 3-member etcd ([`super::etcd::Cluster`]) and servers with
//! the simulator, named h0, h1..., a short `--fleet-ttl`, and a gold image on loopback.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::etcd::Cluster;
use super::{http, Server, TempDir};

pub const TTL: u64 = 3;

pub struct Fleet {
    pub hosts: Vec<Option<Server>>,
    pub files: http::FileServer,
    pub url: String,
    pub checksum: String,
    pub prefix: String,
    dirs: Vec<TempDir>,
    // Last: the servers stop before etcd does.
    pub cluster: Cluster,
}

impl Fleet {
    /// `None` only when etcd is missing and `OSXB_SKIP_ETCD` is set.
    pub fn start(hosts: usize, args: &[&str]) -> Option<Self> {
        Self::start_each(&vec![args; hosts])
    }

    /// Host `n` with `each[n]`'s settings.
    pub fn start_each(each: &[&[&str]]) -> Option<Self> {
        let hosts = each.len();
        let cluster = Cluster::start(3)?;
        let files = http::FileServer::start();
        let archive = super::gold_tar_gz("box");
        let checksum = super::sha1_hex(&archive);
        let url = files.add("/gold.tar.gz", archive);
        let prefix = format!("/t{}/", std::process::id());
        let mut fleet = Self {
            hosts: Vec::new(),
            files,
            url,
            checksum,
            prefix,
            dirs: Vec::new(),
            cluster,
        };
        for (n, args) in each.iter().enumerate() {
            fleet.dirs.push(TempDir::new(&format!("fleet-h{n}")));
            let server = fleet.launch(n, args);
            fleet.hosts.push(Some(server));
            // A host says it joined (its start line) only with the fleet in view: no
            // waiting here for its first read of etcd.
            let seen: Vec<String> = fleet.hosts_seen_by(n)["hosts"]
                .as_array()
                .map(|hosts| hosts.iter().map(|h| h["name"].to_string()).collect())
                .unwrap_or_default();
            let up: Vec<String> = (0..=n).map(|m| format!("\"h{m}\"")).collect();
            assert_eq!(seen, up, "h{n} right after its start line");
        }
        fleet.wait_hosts(hosts);
        Some(fleet)
    }

    pub fn args(&self, n: usize, extra: &[&str]) -> Vec<String> {
        let ttl = TTL.to_string();
        let mut args: Vec<String> = [
            "--etcd",
            &self.cluster.endpoints(),
            "--etcd-prefix",
            &self.prefix,
            "--host-name",
            &format!("h{n}"),
            "--fleet-ttl",
            &ttl,
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts host `n` (again, after a kill: same data folder).
    pub fn launch(&self, n: usize, extra: &[&str]) -> Server {
        let args = self.args(n, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(self.dirs[n].path(), super::options(&args))
    }

    pub fn host(&self, n: usize) -> &Server {
        self.hosts[n].as_ref().expect("host is running")
    }

    pub fn body(&self) -> Value {
        super::image_body(&self.url, &self.checksum)
    }

    /// `POST /vms` of `body` at host `n`.
    pub fn create_on(&self, n: usize, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
        http::request(
            "POST",
            &self.host(n).url("/vms"),
            Some(&body.to_string()),
            headers,
        )
    }

    /// `GET /hosts` on host `n`.
    pub fn hosts_seen_by(&self, n: usize) -> Value {
        let (status, body) = http::request("GET", &self.host(n).url("/hosts"), None, &[]);
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Waits until every running host sees `count` hosts.
    pub fn wait_hosts(&self, count: usize) {
        for n in 0..self.hosts.len() {
            if self.hosts[n].is_none() {
                continue;
            }
            wait_until(
                &format!("h{n} to see {count} hosts"),
                Duration::from_secs(20),
                || {
                    self.hosts_seen_by(n)["hosts"]
                        .as_array()
                        .map_or(0, Vec::len)
                        == count
                },
            );
        }
    }

    /// The VMs host `n` holds itself (a relayed `GET /vms`: not asked of the others).
    pub fn local_vms(&self, n: usize) -> Vec<Value> {
        let (status, list) = http::request(
            "GET",
            &self.host(n).url("/vms"),
            None,
            &[("X-OSX-Builder-Forwarded-By", "test")],
        );
        assert_eq!(status, 200, "{list}");
        list.as_array().cloned().unwrap_or_default()
    }

    /// Pre-warms the fleet's image on host `n` alone, and waits until host 0 sees that `n`
    /// holds it.
    pub fn prewarm_on(&self, n: usize) {
        let image = serde_json::json!({
            "url": self.url, "checksum": self.checksum, "checksum_type": "sha1"
        });
        let (status, body) = http::request(
            "POST",
            &self.host(n).url("/images"),
            Some(&image.to_string()),
            &[],
        );
        assert!(status == 202 || status == 200, "{status} {body}");
        wait_until(
            &format!("h0 to see h{n} holding the image"),
            Duration::from_secs(30),
            || {
                self.record(0, &format!("h{n}"))
                    .is_some_and(|r| r["images"] == serde_json::json!([self.checksum]))
            },
        );
    }

    /// The record of host `name` as host `n` sees it.
    pub fn record(&self, n: usize, name: &str) -> Option<Value> {
        self.hosts_seen_by(n)["hosts"]
            .as_array()?
            .iter()
            .find(|h| h["name"] == name)
            .cloned()
    }
}

/// Starts a server (the simulator's vmrun, a data folder of its own) with `args` that must
/// stop it before it listens: what it said on stderr.
pub fn refused_start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let dir = TempDir::new("fleet-refused");
    let out = std::process::Command::new(super::SERVER_BIN)
        .args(["--port", "0", "--bind", "127.0.0.1", "--data-dir"])
        .arg(dir.path())
        .args(args)
        .env("VMWARE_VMRUN_PATH", super::SIM_BIN)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "it started: {said}");
    said
}

/// Polls `done` until true, or panics naming `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    loop {
        if done() {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
