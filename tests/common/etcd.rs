//! A real etcd cluster for the fleet's tests: three members on free 127.0.0.1 ports, each
//! with its own temp data folder, started fresh (`--initial-cluster-state new`) and
//! stopped by pid when dropped. The binary is `etcd` on PATH (Debian's etcd-server, brew's
//! etcd) or `OSXB_ETCD`. Missing, the tests fail, saying how to install it, unless
//! `OSXB_SKIP_ETCD=1` asks to skip them (see [`Cluster::start`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;

pub struct Member {
    pub name: String,
    pub client_url: String,
    args: Vec<String>,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    bin: PathBuf,
    _dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("OSXB_ETCD") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            "/usr/bin".into(),
            "/usr/local/bin".into(),
            "/opt/homebrew/bin".into(),
        ])
        .map(|dir| dir.join("etcd"))
        .find(|candidate| candidate.is_file())
}

/// PEM files of a cluster that serves its clients over TLS and wants their certificates.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs the clients' certificates.
    pub ca: PathBuf,
}

impl Cluster {
    /// `None` (after a loud note) only when etcd is missing and `OSXB_SKIP_ETCD=1` is set.
    pub fn start(size: usize) -> Option<Self> {
        Self::start_with(size, None)
    }

    /// With `tls`: `https://` client URLs, `--client-cert-auth`. Its members are then only
    /// waited for until they accept connections (`/health` wants a client certificate).
    pub fn start_with(size: usize, tls: Option<&Tls>) -> Option<Self> {
        let Some(bin) = etcd_binary() else {
            if std::env::var_os("OSXB_SKIP_ETCD").is_some() {
                eprintln!("\n*** SKIPPED: etcd is not installed and OSXB_SKIP_ETCD is set: the fleet is NOT tested ***\n");
                return None;
            }
            panic!("etcd is not installed: apt-get install etcd-server (Debian) or brew install etcd (Mac), or set OSXB_ETCD to its path; OSXB_SKIP_ETCD=1 skips these tests");
        };
        let dir = TempDir::new("etcd");
        let token = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(n, (_, peer))| format!("m{n}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(n, (client, peer))| {
                let scheme = if tls.is_some() { "https" } else { "http" };
                let client_url = format!("{scheme}://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let mut args = [
                    "--name",
                    &format!("m{n}"),
                    "--data-dir",
                    &dir.path().join(format!("m{n}")).display().to_string(),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &initial,
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    &token,
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                    "--logger",
                    "zap",
                    "--log-level",
                    "error",
                ]
                .map(String::from)
                .to_vec();
                if let Some(tls) = tls {
                    for (flag, path) in [
                        ("--cert-file", &tls.cert),
                        ("--key-file", &tls.key),
                        ("--trusted-ca-file", &tls.ca),
                    ] {
                        args.extend([flag.to_string(), path.display().to_string()]);
                    }
                    args.push("--client-cert-auth".into());
                }
                Member {
                    name: format!("m{n}"),
                    client_url,
                    args,
                    child: None,
                }
            })
            .collect();
        let mut cluster = Self {
            members,
            bin,
            _dir: dir,
        };
        for n in 0..size {
            cluster.start_member(n);
        }
        if tls.is_some() {
            for (client, _) in &ports {
                super::fleet::wait_until(
                    "etcd to accept connections",
                    Duration::from_secs(30),
                    || std::net::TcpStream::connect(("127.0.0.1", *client)).is_ok(),
                );
            }
        } else {
            cluster.wait_healthy();
        }
        Some(cluster)
    }

    /// The `--etcd` value: every member's client URL.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn start_member(&mut self, n: usize) {
        let member = &mut self.members[n];
        let echo = std::env::var_os("OSXB_TEST_LOG").is_some();
        let child = Command::new(&self.bin)
            .args(&member.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if echo {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.bin.display()));
        member.child = Some(child);
    }

    /// SIGKILL of one member, by its pid.
    pub fn kill_member(&mut self, n: usize) {
        if let Some(mut child) = self.members[n].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every running member says it is healthy (it has a leader).
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let url = format!("{}/health", member.client_url);
                let answer = super::http::try_call("GET", &url, None, &[]);
                if answer
                    .as_ref()
                    .is_ok_and(|a| a.status == 200 && a.json()["health"] == "true")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} never became healthy: {answer:?}",
                    member.name
                );
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in 0..self.members.len() {
            self.kill_member(n);
        }
    }
}
