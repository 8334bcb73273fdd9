//! Overhead per VM: with the gold image cached (warmed by one VM first), the time from
//! `POST /vms` to `running` with an IP, split by step from the server's log (each call of
//! the hypervisor's tool is a line with its duration) and the simulator's own `calls.log`,
//! to show where the time goes. The server's own share is everything but waiting on the tool
//! and the pauses `--ip-poll-interval` asks for between IP queries. Each VM is deleted before
//! the next is made.
//!
//! `cargo bench --bench provision_overhead`: VMware through vmrun-sim without delays,
//! `OSXB_BENCH_VMS` VMs (20), one at a time, each polled every 0.2 ms.
//!
//! `cargo bench --bench provision_overhead -- --hypervisor tart`: tart through tart-sim with
//! a real tart's delays (`common::TART_DELAYS`) and guests that have their DHCP lease
//! `--boot-ms` (5000) plus 0 to `--boot-jitter-ms` (3000) at random after `tart run` holds
//! them (so that IP polling meets leases at every phase of its cycle), 10 VMs, each followed
//! with long polls as a coordinator does; then `--direct` (5) VMs made by this program with
//! the tart commands a script would run (`clone`, `set`, `run`, `ip --wait`): the
//! reference, compared up to the moment tart holds the VM and from the lease to the IP.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::harness::{http, http::FileServer, sha1_hex, TART_SIM_BIN};
use common::{BenchServer, Hv, TempDir};
use serde_json::{json, Value};

fn main() {
    common::print_machine();
    let hv = common::hypervisor_arg();
    let tart = hv == Hv::Tart;
    let vms: usize = std::env::var("OSXB_BENCH_VMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(if tart { 10 } else { 20 });
    let boot_ms = common::arg("--boot-ms", if tart { 5000 } else { 0 });
    let jitter_ms = if tart {
        common::arg("--boot-jitter-ms", 3000)
    } else {
        0
    };
    let direct = common::arg("--direct", if tart { 5 } else { 0 }) as usize;

    let dir = TempDir::new("bench-overhead");
    let root = dir.path().canonicalize().unwrap();
    let sim = hv.sim_state(&root);
    let files = FileServer::start();
    let archive = hv.gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    let (boot, jitter) = (boot_ms.to_string(), jitter_ms.to_string());
    let mut env = vec![(common::boot_env(hv), boot.as_str())];
    if tart {
        env.push(("TART_SIM_BOOT_JITTER_MS", &jitter));
    }
    let server = common::start_server_on(hv, &root, &[], &env);
    let ip_poll = setting("--ip-poll-interval");
    let pause_ms = ip_poll.parse::<f64>().unwrap_or(0.0) * 1e3;
    let tool = hv.tool();
    match hv {
        Hv::Vmware => println!(
            "server settings: defaults (--ip-poll-interval {ip_poll}), simulator delays 0, guest boot {boot_ms} ms"
        ),
        Hv::Tart => println!(
            "server settings: defaults (--ip-poll-interval {ip_poll}); tart-sim delays '{}' (assumed, not measured on a Mac); guest boot (run holds the VM → DHCP lease) {boot_ms} ms + 0 to {jitter_ms} ms at random",
            common::tart_delays()
        ),
    }
    let body = json!({
        "cpus": 2, "memory": 1024, "network_type": "nat", "headless": true,
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
    })
    .to_string();
    let follow = if boot_ms == 0 {
        Follow::Spin
    } else {
        Follow::LongPoll
    };

    let warm = provision(hv, &server, &body, follow, boot_ms);
    println!(
        "warm-up VM (download, unpack, gold prepared): {:.0} ms",
        warm.total.as_secs_f64() * 1e3
    );
    // Most of the server's own share is fsyncs: their cost on this disk, now, between VMs.
    let scratch = root.join("fsync-reference");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut fsyncs = Vec::new();
    let mut runs = Vec::new();
    for i in 0..vms {
        runs.push(provision(hv, &server, &body, follow, boot_ms));
        fsyncs.extend((0..3).map(|k| common::fsync_once(&scratch, i * 3 + k)));
    }
    // The log and the call log are written as things happen; give the last lines a moment.
    thread::sleep(Duration::from_millis(200));
    let log = server.log();
    let calls = sim_calls(&sim);

    let rows: Vec<Steps> = runs
        .iter()
        .filter_map(|run| Steps::from_log(hv, &log, &calls, run, pause_ms))
        .collect();
    println!(
        "{} VMs, one at a time, each from POST to a GET showing running with an IP ({}):",
        rows.len(),
        follow.describe()
    );
    println!();
    println!(
        "{:<44} {:>9} {:>9}   of which {tool} ran (its own clock), mean ms",
        "step", "mean ms", "median"
    );
    for (label, values, own) in Steps::table(&rows) {
        let own = own.map(|o| format!("{:.1}", mean(&o))).unwrap_or_default();
        println!(
            "{label:<44} {:>9.1} {:>9.1}   {own}",
            mean(&values),
            median(values)
        );
    }
    let col = |f: fn(&Steps) -> f64| rows.iter().map(f).collect::<Vec<f64>>();
    println!(
        "{:<44} {:>9.1} {:>9.1}",
        "total (client: POST sent → ready seen)",
        mean(&col(|r| r.total_ms)),
        median(col(|r| r.total_ms))
    );
    println!();
    let waiting = col(|r| r.tool_ms);
    let own_run = col(|r| r.tool_own_ms);
    let spawn_share: Vec<f64> = waiting.iter().zip(&own_run).map(|(s, o)| s - o).collect();
    let server_share = col(|r| r.total_ms - r.tool_ms - r.pauses_ms);
    println!("{tool} calls per VM: {:.1}", mean(&col(|r| r.calls as f64)));
    let rest = if tart {
        "process start/exit/reaping, `list`s, and in `run` the driver's wait: the lock on the VM's config.json looked at every 20 ms until `tart run` holds it, then 1 s more with it held, while the guest boots"
    } else {
        "process start/exit/reaping and `list`s"
    };
    println!(
        "waiting on {tool} (spawn → exit seen by the server): mean {:.1} ms, of which {tool}'s own run {:.1} ms and {:.1} ms {rest}",
        mean(&waiting),
        mean(&own_run),
        mean(&spawn_share)
    );
    if tart {
        println!(
            "pauses between IP queries (--ip-poll-interval): mean {:.1} ms; the server logged the IP {:.0} ms (mean; median {:.0}) after the guest's lease appeared",
            mean(&col(|r| r.pauses_ms)),
            mean(&col(|r| r.ip_late_ms)),
            median(col(|r| r.ip_late_ms))
        );
    }
    let target = if tart { 20.0 } else { 10.0 };
    let share = mean(&server_share);
    println!(
        "server's own share (total − waiting on {tool} − pauses): mean {share:.1} ms, median {:.1} ms; target < {target:.0} ms: {}",
        median(server_share.clone()),
        if share < target { "PASS" } else { "MISS" }
    );
    let fsync_ms: Vec<f64> = fsyncs.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!(
        "reference: one fsync of a new 450-byte file on the same disk, {} between the VMs: median {:.2} ms, mean {:.2} ms; the share is {:.0} of them",
        fsync_ms.len(),
        median(fsync_ms.clone()),
        mean(&fsync_ms),
        share / median(fsync_ms.clone()).max(1e-3)
    );
    if direct > 0 {
        let script = by_hand(&root, &body_of(&body), direct, (boot_ms, jitter_ms));
        let served: Vec<(f64, f64)> = runs
            .iter()
            .filter_map(|run| {
                let (held, ready) = run.lease?;
                let seen = run.posted_at_ms + run.total.as_secs_f64() * 1e3;
                Some((held - run.posted_at_ms, seen - ready))
            })
            .collect();
        println!();
        println!(
            "reference: {} VMs made by this program running tart itself (`clone`, `set`, `run` in the background, `ip --wait 120`), one at a time, same delays:",
            script.len()
        );
        println!(
            "{:<36} {:>22} {:>26} {:>11}",
            "mean ms", "server (from POST sent)", "tart alone (from `clone`)", "difference"
        );
        for (label, pick) in [
            ("until `tart run` holds the VM", 0),
            ("from the guest's lease to its IP", 1),
        ] {
            let of = |v: &[(f64, f64)]| {
                mean(
                    &v.iter()
                        .map(|p| if pick == 0 { p.0 } else { p.1 })
                        .collect::<Vec<_>>(),
                )
            };
            let (ours, theirs) = (of(&served), of(&script));
            println!(
                "{label:<36} {ours:>22.1} {theirs:>26.1} {:>+11.1}",
                ours - theirs
            );
        }
    }
}

fn body_of(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A setting's default, from `--help` (`--flag  ENV  default`).
fn setting(flag: &str) -> String {
    let out = Command::new(common::SERVER_BIN)
        .arg("--help")
        .output()
        .expect("osx-builder --help");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(flag))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or("?")
        .to_string()
}

/// How the client waits for a VM to be ready.
#[derive(Clone, Copy)]
enum Follow {
    /// A plain GET every 0.2 ms: a VM ready in milliseconds is seen at once.
    Spin,
    /// `?wait=60` with the last ETag, as a coordinator follows a VM that boots for seconds.
    LongPoll,
}

impl Follow {
    fn describe(self) -> &'static str {
        match self {
            Follow::Spin => "a GET every 0.2 ms",
            Follow::LongPoll => "long polls with If-None-Match",
        }
    }
}

struct Run {
    id: String,
    /// When the POST was sent (the system clock, ms, as the simulator's).
    posted_at_ms: f64,
    post: Duration,
    total: Duration,
    /// tart: when `tart run` held the VM and when its guest's lease appeared (the
    /// simulator's clock, ms).
    lease: Option<(f64, f64)>,
}

/// POSTs one VM, follows it until it runs with an IP, then deletes it.
fn provision(hv: Hv, server: &BenchServer, body: &str, follow: Follow, boot_ms: u64) -> Run {
    let posted_at_ms = epoch_ms();
    let started = Instant::now();
    let (status, reply) =
        common::request(server.addr, "POST", "/vms", Some(body.as_bytes())).expect("POST /vms");
    let post = started.elapsed();
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&reply));
    let vm: Value = serde_json::from_slice(&reply).unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    let path = format!("/vms/{id}");
    let deadline = started + Duration::from_secs(120);
    let mut etag = String::new();
    loop {
        let (status, vm) = match follow {
            Follow::Spin => {
                let (status, reply) = common::get(server.addr, &path).expect("GET /vms/:id");
                (
                    status,
                    serde_json::from_slice(&reply).unwrap_or(Value::Null),
                )
            }
            Follow::LongPoll => {
                let url = format!("http://{}{path}?wait=60", server.addr);
                let headers: Vec<(&str, &str)> = if etag.is_empty() {
                    Vec::new()
                } else {
                    vec![("If-None-Match", etag.as_str())]
                };
                let answer = http::try_call("GET", &url, None, &headers).expect("GET ?wait");
                if let Some(tag) = answer.header("etag") {
                    etag = tag.to_string();
                }
                if answer.status == 304 {
                    continue;
                }
                (answer.status, answer.json())
            }
        };
        assert_eq!(status, 200, "{vm}");
        assert_ne!(vm["status"], "failed", "{vm}\n{}", server.log());
        if vm["status"] == "running" && vm["ip_address"] != "" {
            break;
        }
        assert!(Instant::now() < deadline, "{vm}\n{}", server.log());
        if let Follow::Spin = follow {
            thread::sleep(Duration::from_micros(200));
        }
    }
    let total = started.elapsed();
    let lease = (hv == Hv::Tart)
        .then(|| lease_of(&server.sim_state, &format!("osxb-{id}"), boot_ms))
        .flatten();
    let (status, reply) = common::request(server.addr, "DELETE", &path, None).expect("DELETE");
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&reply));
    Run {
        id,
        posted_at_ms,
        post,
        total,
        lease,
    }
}

/// A running tart-sim VM's (held, lease appeared) times in ms: its runner's record says
/// when it took the VM and its MAC, the MAC's lease how much its boot was drawn longer.
fn lease_of(sim: &Path, name: &str, boot_ms: u64) -> Option<(f64, f64)> {
    let read = |path: PathBuf| -> Option<Value> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let run = read(sim.join("runs").join(format!("{name}.json")))?;
    let mac = run["mac"].as_str()?.replace(':', "-");
    let lease = read(sim.join("leases").join(format!("{mac}.json")))?;
    let held = run["started_at_ms"].as_f64()?;
    Some((held, held + boot_ms as f64 + lease["jitter_ms"].as_f64()?))
}

/// One call of the tool on the VM's critical path, as the server logged it (ms).
struct ToolCall {
    command: String,
    start: f64,
    end: f64,
}

/// The calls of `vm`'s tool between `created` and `has IP`, from their log lines:
/// `[vm=<id> ]vmrun COMMAND ...: OUTCOME after N ms[: detail]` or `tart COMMAND osxb-<id> ->
/// OUTCOME in N ms`. A `list` names no VM: one that runs wholly between two calls of the VM
/// before its IP queries (vmrun's start lists the running VMs first, for stale locks) is on the
/// VM's path; the background listing's others are not.
fn tool_calls(hv: Hv, segment: &[(f64, &str)], id: &str) -> Vec<ToolCall> {
    let vm_prefix = format!("vm={id} ");
    let tart_name = format!("osxb-{id}");
    let mut calls = Vec::new();
    let mut lists = Vec::new();
    for (t, m) in segment {
        let m = m.strip_prefix(&vm_prefix).unwrap_or(m);
        let parsed = match hv {
            Hv::Vmware => m.strip_prefix("vmrun ").and_then(|rest| {
                let after = rest.split(": ").nth(1)?.split_once(" after ")?.1;
                let command = rest.split([' ', ':']).next()?;
                // VMs are made one at a time: every vmrun call in the segment is this VM's.
                Some((command, after.split(' ').next()?, true))
            }),
            Hv::Tart => m.strip_prefix("tart ").and_then(|rest| {
                let mut words = rest.split_whitespace();
                let command = words.next()?;
                let ours = words.next() == Some(tart_name.as_str());
                Some((command, rest.rsplit(' ').nth(1)?, ours))
            }),
        };
        let Some((command, millis, ours)) = parsed else {
            continue;
        };
        let Ok(millis) = millis.parse::<f64>() else {
            continue;
        };
        let call = ToolCall {
            command: command.to_string(),
            start: t - millis,
            end: *t,
        };
        if command == "list" {
            lists.push(call);
        } else if ours {
            calls.push(call);
        }
    }
    let mut on_path = Vec::new();
    for pair in calls.windows(2) {
        if is_ip_query(&pair[0].command) {
            break;
        }
        if let Some(i) = lists
            .iter()
            .position(|l| l.start >= pair[0].end && l.end <= pair[1].start)
        {
            on_path.push(lists.swap_remove(i));
        }
    }
    calls.extend(on_path);
    calls.sort_by(|a, b| a.start.total_cmp(&b.start));
    calls
}

fn is_ip_query(command: &str) -> bool {
    matches!(command, "getGuestIPAddress" | "ip")
}

/// One VM's steps, in milliseconds, in the order they happened.
struct Steps {
    rows: Vec<(String, f64, Option<f64>)>,
    calls: usize,
    tool_ms: f64,
    tool_own_ms: f64,
    pauses_ms: f64,
    ip_late_ms: f64,
    total_ms: f64,
}

impl Steps {
    /// The VM's log lines run from `vm=<id> created` to `vm=<id> has IP`; VMs were made one
    /// at a time, so every call of the tool between them is this VM's.
    /// `pause_ms`: `--ip-poll-interval`.
    fn from_log(hv: Hv, log: &str, sim: &[Value], run: &Run, pause_ms: f64) -> Option<Steps> {
        let id = &run.id;
        let lines: Vec<(f64, &str)> = log.lines().filter_map(parse_line).collect();
        let first = lines
            .iter()
            .position(|(_, m)| *m == format!("vm={id} created"))?;
        let last = first
            + lines[first..]
                .iter()
                .position(|(_, m)| m.starts_with(&format!("vm={id} has IP")))?;
        let (created, has_ip) = (lines[first].0, lines[last].0);
        let calls = tool_calls(hv, &lines[first..=last], id);
        calls.iter().find(|c| is_ip_query(&c.command))?;
        let own = |command: &str| -> Option<f64> {
            if command == "list" {
                // calls.log cannot tell which list was this VM's.
                return None;
            }
            if hv == Hv::Tart && command == "run" {
                // Its line in calls.log spans the VM's life: until it held the VM.
                let spawned = sim_own(sim, id, "run");
                return match (spawned.first(), run.lease) {
                    (Some((s, _)), Some((held, _))) => Some(held - s),
                    _ => None,
                };
            }
            Some(sim_own(sim, id, command).iter().map(|(s, e)| e - s).sum())
        };
        let total_ms = run.total.as_secs_f64() * 1e3;
        let post_ms = run.post.as_secs_f64() * 1e3;
        let mut rows = vec![("POST → 202 (client)".to_string(), post_ms, None)];
        rows.push((
            format!("queued → {} spawned", calls[0].command),
            calls[0].start - created,
            None,
        ));
        let (mut ip_ms, mut between_ms, mut pauses_ms) = (0.0, 0.0, 0.0);
        for (i, call) in calls.iter().enumerate() {
            let next = calls.get(i + 1);
            if is_ip_query(&call.command) {
                ip_ms += call.end - call.start;
                if let Some(next) = next {
                    between_ms += next.start - call.end;
                    pauses_ms += pause_ms;
                }
                continue;
            }
            rows.push((
                call.command.clone(),
                call.end - call.start,
                own(&call.command),
            ));
            if let Some(next) = next {
                rows.push((
                    format!("{} done → {} spawned", call.command, next.command),
                    next.start - call.end,
                    None,
                ));
            }
        }
        let ip_command = &calls.iter().find(|c| is_ip_query(&c.command))?.command;
        rows.push((
            format!("{ip_command} (all queries until an address)"),
            ip_ms,
            own(ip_command),
        ));
        rows.push((
            "between IP queries (incl. the pauses)".to_string(),
            between_ms,
            None,
        ));
        let last_call = calls.last()?.end;
        rows.push((
            "last query done → IP logged".to_string(),
            has_ip - last_call,
            None,
        ));
        // POST → "created" is inside post_ms; the rest is after the IP is logged.
        rows.push((
            "IP logged → GET shows it".to_string(),
            total_ms - post_ms - (has_ip - created),
            None,
        ));
        let tool_ms = calls.iter().map(|c| c.end - c.start).sum();
        let mut commands: Vec<&str> = calls.iter().map(|c| c.command.as_str()).collect();
        commands.dedup();
        let tool_own_ms = commands.iter().filter_map(|c| own(c)).sum();
        Some(Steps {
            rows,
            calls: calls.len(),
            tool_ms,
            tool_own_ms,
            pauses_ms,
            ip_late_ms: run.lease.map(|(_, at)| has_ip - at).unwrap_or(0.0),
            total_ms,
        })
    }

    /// Each step's values over the VMs (and the tool's own times where there are), in the
    /// order of the first VM.
    #[allow(clippy::type_complexity)]
    fn table(rows: &[Steps]) -> Vec<(String, Vec<f64>, Option<Vec<f64>>)> {
        let mut order: Vec<String> = Vec::new();
        let mut values: BTreeMap<String, (Vec<f64>, Option<Vec<f64>>)> = BTreeMap::new();
        for steps in rows {
            for (label, ms, own) in &steps.rows {
                if !order.contains(label) {
                    order.push(label.clone());
                }
                let entry = values.entry(label.clone()).or_default();
                entry.0.push(*ms);
                if let Some(own) = own {
                    entry.1.get_or_insert_with(Vec::new).push(*own);
                }
            }
        }
        order
            .into_iter()
            .filter_map(|label| {
                let (v, own) = values.remove(&label)?;
                Some((label, v, own))
            })
            .collect()
    }
}

/// (start, end) in ms of each call of `command` on the VM `id` in the simulator's calls.log.
fn sim_own(calls: &[Value], id: &str, command: &str) -> Vec<(f64, f64)> {
    calls
        .iter()
        .filter(|c| {
            let args = common::harness::sim_call_args(c);
            args.contains(&command) && args.iter().any(|a| a.contains(id))
        })
        .map(|c| {
            (
                c["t_start_ms"].as_f64().unwrap_or(0.0),
                c["t_end_ms"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(0.0)
}

/// The reference on tart: `n` VMs made from the server's gold VM by running tart-sim as a
/// script would, one at a time, each deleted after. For each (ms): from `clone` until `run`
/// held the VM, and from the guest's lease until `ip --wait` answered.
fn by_hand(root: &Path, body: &Value, n: usize, boot: (u64, u64)) -> Vec<(f64, f64)> {
    let home = root.join("data/tart");
    let gold = std::fs::read_dir(home.join("vms"))
        .expect("the server's tart home")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| name.starts_with("osxb-gold-"))
        .expect("the server's gold VM");
    let tart = |args: &[&str]| -> String {
        let out = tart_command(&home, boot)
            .args(args)
            .output()
            .expect("run tart-sim");
        assert!(
            out.status.success(),
            "tart {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (cpus, memory) = (body["cpus"].to_string(), body["memory"].to_string());
    (0..n)
        .map(|k| {
            let name = format!("bench-direct-{k}");
            let started = epoch_ms();
            tart(&["clone", &gold, &name]);
            tart(&["set", &name, "--cpu", &cpus, "--memory", &memory]);
            let mut runner = tart_command(&home, boot)
                .args(["run", "--no-graphics", &name])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("tart run");
            let ip = tart(&["ip", &name, "--wait", "120"]);
            let answered = epoch_ms();
            assert!(!ip.is_empty());
            let (held, ready) = lease_of(&home.join(".sim"), &name, boot.0).expect("its lease");
            tart(&["stop", &name]);
            let _ = runner.wait();
            tart(&["delete", &name]);
            (held - started, answered - ready)
        })
        .collect()
}

/// tart-sim as the server runs it, with the benchmark's delays and boot.
fn tart_command(home: &Path, (boot_ms, jitter_ms): (u64, u64)) -> Command {
    let mut command = Command::new(PathBuf::from(TART_SIM_BIN));
    command
        .env("TART_HOME", home)
        .env("TART_NO_AUTO_PRUNE", "1")
        .env("TART_SIM_FAULTS", common::tart_delays())
        .env("TART_SIM_BOOT_MS", boot_ms.to_string())
        .env("TART_SIM_BOOT_JITTER_MS", jitter_ms.to_string());
    command
}

/// `2026-11-24T17:00:00.123Z INFO  message` → (milliseconds, message).
fn parse_line(line: &str) -> Option<(f64, &str)> {
    let (stamp, rest) = line.split_once(' ')?;
    let message = rest.get(6..)?;
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, mi) = (
        t.next()?.parse::<f64>().ok()?,
        t.next()?.parse::<f64>().ok()?,
    );
    let s: f64 = t.next()?.parse().ok()?;
    let days = days_from_civil(y, mo, da) as f64;
    Some((
        (days * 86_400.0 + h * 3600.0 + mi * 60.0 + s) * 1e3,
        message,
    ))
}

/// Howard Hinnant's days-from-civil: day number of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn sim_calls(sim: &Path) -> Vec<Value> {
    std::fs::read_to_string(sim.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
