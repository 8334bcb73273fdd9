//! The command line as a person or a script uses it: the same binary as a client of the
//! real server (against the simulator), with exit status, tables, `--json` and the
//! `--wait` progress on a pseudo-terminal and without one.

mod common;

use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::http::{self, Delivery};
use common::{gold_tar_gz_padded, sha1_hex, ServerOptions, World, SERVER_BIN};
use serde_json::Value;

use common::client_bare as bare;

/// The client with `args`, then `--server server`.
fn client(server: &str, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--server", server]);
    bare(&all)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn slow_clone() -> ServerOptions {
    ServerOptions {
        env: vec![("VMRUN_SIM_CLONE_MS".into(), "2500".into())],
        args: Vec::new(),
    }
}

fn create_args<'a>(world: &'a World, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "vm",
        "create",
        "--image-url",
        &world.url,
        "--checksum",
        &world.checksum,
        "--headless",
    ];
    args.extend_from_slice(extra);
    args
}

/// The value of `key` in the client's key-value table.
fn field(table: &str, key: &str) -> Option<String> {
    table.lines().find_map(|line| {
        let (k, v) = line.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().to_string())
    })
}

#[test]
fn create_wait_exits_0_with_the_ip_and_says_each_phase_once() {
    // A clone that takes as long as a real one on a busy Mac: longer than the 1 s between
    // progress answers, so that `cloning` is a phase the client is shown.
    let w = World::start("cli-create", slow_clone());
    let out = client(&w.server.base, &create_args(&w, &["--wait", "--cpus", "3"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let stdout = text(&out.stdout);
    let id = field(&stdout, "id").expect("id row");
    let ip = field(&stdout, "ip_address").expect("ip row");
    let (_, vm) = w.server.get_vm(&id);
    assert_eq!(vm["ip_address"], ip.as_str(), "{}", show(&out));
    assert_eq!(vm["status"], "running");
    assert_eq!(vm["cpus"], 3);
    assert_eq!(field(&stdout, "status").as_deref(), Some("running"));
    // Not a terminal: a line per phase, none repeated, no redrawing.
    let stderr = text(&out.stderr);
    assert!(!stderr.contains('\r'), "{stderr:?}");
    let lines: Vec<&str> = stderr.lines().collect();
    let prefix = format!("vm {id}: ");
    assert!(lines.iter().all(|l| l.starts_with(&prefix)), "{stderr}");
    assert_eq!(lines.last(), Some(&format!("{prefix}ready {ip}").as_str()));
    assert!(
        lines.contains(&format!("{prefix}cloning").as_str()),
        "{stderr}"
    );
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "{stderr}");
    }
}

#[test]
fn a_failing_image_exits_1_with_its_code_and_json_parses() {
    let w = World::start("cli-fail", ServerOptions::default());
    let wrong = "0".repeat(40);
    let out = client(
        &w.server.base,
        &[
            "vm",
            "create",
            "--image-url",
            &w.url,
            "--checksum",
            &wrong,
            "--wait",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let vm: Value = serde_json::from_slice(&out.stdout).expect("--json prints the VM");
    assert_eq!(vm["status"], "failed");
    assert_eq!(vm["error"]["code"], "checksum-mismatch");
    assert!(
        text(&out.stderr).contains("failed: checksum-mismatch:"),
        "{}",
        show(&out)
    );
    // A refused create: the server's code, exit 1, and its body with --json.
    let out = client(
        &w.server.base,
        &[
            "vm",
            "create",
            "--image-url",
            "gopher://x",
            "--checksum",
            &wrong,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["code"], "invalid-image-url");
    assert!(text(&out.stderr).contains("400 invalid-image-url"));
    let out = client(&w.server.base, &["vm", "get", &"a".repeat(20)]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("404 vm-not-found"));
}

#[test]
fn json_output_of_every_listing_parses_and_tables_show_the_vm() {
    let w = World::start("cli-json", ServerOptions::default());
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let json = |args: &[&str]| -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        let out = client(&w.server.base, &args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    };
    assert_eq!(json(&["vm", "get", &id])["id"], id.as_str());
    let list = json(&["vm", "list"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(
        json(&["vm", "list", "--status", "failed"]),
        Value::Array(vec![])
    );
    assert_eq!(
        json(&["vm", "list", "--status", "running"])[0]["id"],
        id.as_str()
    );
    let images = json(&["image", "list"]);
    assert_eq!(images[0]["checksum"], w.checksum.as_str());
    assert_eq!(json(&["health"])["status"], "ok");
    assert_eq!(json(&["drain"])["draining"], true);
    assert_eq!(json(&["undrain"])["draining"], false);
    let out = client(&w.server.base, &["vm", "list"]);
    let table = text(&out.stdout);
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains(&id) && table.contains("running"), "{table}");
    let out = client(&w.server.base, &["image", "delete", &w.checksum]);
    assert_eq!(out.status.code(), Some(1), "in use: {}", show(&out));
    assert!(text(&out.stderr).contains("image-in-use"));
    let out = client(&w.server.base, &["vm", "delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(text(&out.stdout), format!("deleted {id}\n"));
    assert_eq!(w.server.get_vm(&id).0, 404);
}

#[test]
fn pool_commands_declare_show_and_delete_a_warm_pool() {
    let w = World::start("cli-pool", ServerOptions::default());
    let spec = w.dir.path().join("pool.json");
    std::fs::write(&spec, w.body().to_string()).unwrap();
    let spec = spec.display().to_string();
    let run = |args: &[&str]| {
        let out = client(&w.server.base, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
        text(&out.stdout)
    };
    // The spec file is a create's body; --size and the shape options lay over it.
    let declared: Value = serde_json::from_str(&run(&[
        "pool", "put", "ci", "-f", &spec, "--size", "1", "--cpus", "2", "--json",
    ]))
    .unwrap();
    assert_eq!(
        (declared["name"].as_str(), declared["size"].as_u64()),
        (Some("ci"), Some(1))
    );
    assert_eq!(declared["cpus"], 2);
    let ready = common::eventually("the pool's VM ready", || {
        let pool: Value = serde_json::from_str(&run(&["pool", "get", "ci", "--json"])).ok()?;
        (pool["ready"] == 1).then_some(pool)
    });
    assert_eq!(ready["image"]["checksum"], w.checksum.as_str());
    let table = run(&["pool", "list"]);
    assert!(table.starts_with("NAME "), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("ci "))
        .unwrap_or_default();
    assert!(row.contains(&w.checksum), "{table}");
    let listed: Value = serde_json::from_str(&run(&["pool", "list", "--json"])).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    // Refusals keep the server's code, and a spec without an image is a usage error.
    let out = client(
        &w.server.base,
        &["pool", "put", "ci", "-f", &spec, "--size", "65"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("invalid-size"), "{}", show(&out));
    let out = client(&w.server.base, &["pool", "put", "ci", "--size", "1"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert_eq!(run(&["pool", "delete", "ci"]), "deleted ci\n");
    let out = client(&w.server.base, &["pool", "get", "ci"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    common::eventually("the idle VM destroyed", || {
        (w.vm_count() == 0).then_some(())
    });
}

#[test]
fn renew_extends_the_lease() {
    let w = World::start("cli-renew", ServerOptions::default());
    let out = client(
        &w.server.base,
        &create_args(&w, &["--ttl", "600", "--json"]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let vm: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = vm["id"].as_str().unwrap().to_string();
    assert_eq!(vm["ttl"], 600);
    let out = client(
        &w.server.base,
        &["vm", "renew", &id, "--ttl", "7200", "--json"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let renewed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(renewed["ttl"], 7200);
    assert!(renewed["expires_at"].as_str() > vm["expires_at"].as_str());
}

#[test]
fn an_unreachable_server_exits_3_and_usage_errors_exit_2() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = format!("http://127.0.0.1:{port}");
    for args in [
        &["vm", "list"][..],
        &["health"],
        &["vm", "get", "c8a934d72293a7d31baf"],
    ] {
        let out = client(&gone, args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", show(&out));
        assert!(
            text(&out.stderr).contains("cannot reach the server"),
            "{}",
            show(&out)
        );
    }
    for (args, needle) in [
        (&["vm", "list", "--bogus"][..], "unknown option --bogus"),
        (&["vm", "get"], "give the VM id"),
        (&["vm", "get", "../../etc"], "is not a VM id"),
        (&["vm", "frob"], "unknown command"),
        (&["vm", "create", "--cpus", "2"], "give the image"),
        (
            &[
                "vm",
                "create",
                "--image-url",
                "http://x/a",
                "--checksum",
                "abc",
            ],
            "--checksum-type",
        ),
    ] {
        let out = client(&gone, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            show(&out)
        );
    }
    for server in ["ftp://127.0.0.1:1", "127.0.0.1:12345"] {
        let out = client(server, &["vm", "list"]);
        assert_eq!(out.status.code(), Some(2), "{server}: {}", show(&out));
    }
    // https is spoken: an https server that is not there is unreachable (3), not a usage error.
    let out = client("https://127.0.0.1:1", &["vm", "list"]);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let out = client(&gone, &["vm", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("vm create"), "{}", show(&out));
}

#[test]
fn the_token_is_sent_from_the_flag_or_the_environment() {
    let options = ServerOptions {
        args: vec!["--token".into(), "cli-test-token-0123".into()],
        ..ServerOptions::default()
    };
    let w = World::start("cli-token", options);
    let out = client(&w.server.base, &["vm", "list"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("401 unauthorized"),
        "{}",
        show(&out)
    );
    let out = client(
        &w.server.base,
        &["vm", "list", "--token", "cli-test-token-0123"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = Command::new(SERVER_BIN)
        .args(["vm", "list", "--json"])
        .env("OSX_BUILDER_URL", &w.server.base)
        .env("OSX_BUILDER_TOKEN", "cli-test-token-0123")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        Value::Array(vec![])
    );
}

/// A group alone is a usage error with the group's usage on stderr; `help` and `help GROUP`
/// print on stdout and exit 0; the server's `--help` names every group.
#[test]
fn a_bare_group_prints_its_usage_and_help_names_every_command() {
    for group in ["vm", "image", "pool", "host"] {
        let out = bare(&[group]);
        assert_eq!(out.status.code(), Some(2), "{group}: {}", show(&out));
        let usage = text(&out.stderr);
        assert!(
            usage.starts_with(&format!("Usage: osx-builder {group} COMMAND")),
            "{}",
            show(&out)
        );
        assert!(usage.contains(&format!("  {group} list")), "{usage}");
        assert!(usage.contains("--token-file"), "{usage}");
        assert!(out.stdout.is_empty(), "{}", show(&out));
        let help = bare(&["help", group]);
        assert_eq!(help.status.code(), Some(0), "{}", show(&help));
        assert_eq!(text(&help.stdout), usage);
    }
    let only_vm = text(&bare(&["help", "vm"]).stdout);
    assert!(!only_vm.contains("pool put"), "{only_vm}");
    let all = bare(&["help"]);
    assert_eq!(all.status.code(), Some(0), "{}", show(&all));
    let all = text(&all.stdout);
    for command in [
        "vm create",
        "vm list",
        "image prewarm",
        "pool put",
        "host list",
        "drain | undrain",
        "health",
        "help [COMMAND]",
    ] {
        assert!(all.contains(command), "{command} missing:\n{all}");
    }
    let out = bare(&["help", "nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let server_help = text(&bare(&["--help"]).stdout);
    let usage = server_help
        .lines()
        .find(|l| l.contains("talk to a running server"))
        .unwrap_or_else(|| panic!("{server_help}"));
    for group in [
        "vm", "image", "pool", "host", "drain", "undrain", "health", "help",
    ] {
        assert!(
            usage.split(['|', ' ']).any(|word| word == group),
            "{group} missing: {usage}"
        );
    }
}

/// `vm list`: POOL and LABELS columns, `--pool`, `--label`, repeated `--status`, `-q` for
/// ids alone; the options every command takes before the command as after it.
#[test]
fn vm_list_shows_pools_and_labels_filters_and_prints_ids() {
    let w = World::start("cli-list", ServerOptions::default());
    let mut go = w.body();
    go["labels"] = serde_json::json!({"team": "go", "os": "13"});
    let go = w.create(&go);
    let mut rust = w.body();
    rust["labels"] = serde_json::json!({"team": "rust"});
    let rust = w.create(&rust);
    let mut spec = w.body();
    spec["size"] = Value::from(1);
    let (status, pool) = http::request(
        "PUT",
        &w.server.url("/pools/warm"),
        Some(&spec.to_string()),
        &[],
    );
    assert_eq!(status, 201, "{pool}");
    w.server.wait_ready(&go);
    w.server.wait_ready(&rust);
    let idle = common::eventually("the pool's VM ready", || {
        let (_, pool) = http::request("GET", &w.server.url("/pools/warm"), None, &[]);
        (pool["ready"] == 1).then(|| pool["vms"][0].as_str().unwrap_or_default().to_string())
    });
    let ids = |args: &[&str]| -> Vec<String> {
        let out = client(&w.server.base, args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
        let mut ids: Vec<String> = text(&out.stdout).lines().map(String::from).collect();
        ids.sort();
        ids
    };
    let sorted = |list: &[&String]| {
        let mut list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        list.sort();
        list
    };
    assert_eq!(ids(&["vm", "list", "-q"]), sorted(&[&go, &rust, &idle]));
    assert_eq!(
        ids(&["vm", "list", "-q", "--label", "team=go"]),
        std::slice::from_ref(&go)
    );
    assert_eq!(
        ids(&["vm", "list", "--pool", "warm", "-q"]),
        std::slice::from_ref(&idle)
    );
    assert_eq!(
        ids(&["vm", "list", "-q", "--status", "failed", "--status", "running"]).len(),
        3
    );
    assert!(ids(&["vm", "list", "-q", "--status", "failed"]).is_empty());

    let out = client(&w.server.base, &["vm", "list"]);
    let table = text(&out.stdout);
    let header = table.lines().next().unwrap_or_default();
    assert!(
        header.contains(" POOL ") && header.contains(" LABELS "),
        "{table}"
    );
    let row = |id: &str| {
        table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing:\n{table}"))
            .to_string()
    };
    assert!(row(&go).contains(" os=13,team=go "), "{table}");
    assert!(row(&idle).contains(" warm "), "{table}");

    // Before the command, with `=` or without.
    let out = bare(&["--server", &w.server.base, "--json", "vm", "list"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    let server = format!("--server={}", w.server.base);
    let out = bare(&[&server, "vm", "list", "-q", "--pool", "warm"]);
    assert_eq!(text(&out.stdout), format!("{idle}\n"), "{}", show(&out));

    // A create the pool serves runs with its IP in the 202: `--wait` says "ready" once.
    let out = client(&w.server.base, &create_args(&w, &["--wait"]));
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(
        field(&text(&out.stdout), "id"),
        Some(idle),
        "{}",
        show(&out)
    );
    assert_eq!(
        text(&out.stderr).lines().count(),
        1,
        "one line, the result: {}",
        show(&out)
    );
}

/// The token from a file (`--token-file`, `OSX_BUILDER_TOKEN_FILE`), never the command line;
/// `health` without it says the checks need it.
#[test]
fn the_token_comes_from_a_file_and_health_says_when_it_is_missing() {
    let token = "cli-file-token-0123456789";
    let w = World::start("cli-token-file", common::options(&["--token", token]));
    let file = w.dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let file = file.display().to_string();

    let out = client(&w.server.base, &["health"]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("keeps its checks for requests with its token"),
        "{}",
        show(&out)
    );
    assert!(!text(&out.stdout).contains("CHECK"), "{}", show(&out));
    // A failing server tells a client without the token its status too (503 and
    // `{"status": "failing"}`): the same output, exit 1, no code the server never sent.
    let failing_dir = common::TempDir::new("cli-token-failing");
    let failing = common::Server::start_with(
        failing_dir.path(),
        common::options(&["--token", token, "--vmrun-path", "/nonexistent/vmrun"]),
    );
    let out = client(&failing.base, &["health"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stdout).starts_with("status: failing"),
        "{}",
        show(&out)
    );
    assert!(
        text(&out.stderr).contains("keeps its checks for requests with its token")
            && !text(&out.stderr).contains("http-503"),
        "{}",
        show(&out)
    );
    let out = client(&w.server.base, &["health", "--token-file", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(text(&out.stdout).contains("vmrun"), "{}", show(&out));
    assert!(text(&out.stderr).is_empty(), "{}", show(&out));

    let out = bare(&[
        "--token-file",
        &file,
        "--server",
        &w.server.base,
        "vm",
        "list",
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = Command::new(SERVER_BIN)
        .args(["vm", "list", "--json"])
        .env("OSX_BUILDER_URL", &w.server.base)
        .env_remove("OSX_BUILDER_TOKEN")
        .env("OSX_BUILDER_TOKEN_FILE", &file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let empty = w.dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (args, needle) in [
        (
            vec!["vm", "list", "--token-file", &file, "--token", token],
            "not both",
        ),
        (
            vec!["vm", "list", "--token-file", "/nonexistent/token"],
            "/nonexistent/token",
        ),
        (
            vec!["vm", "list", "--token-file", empty.to_str().unwrap()],
            "empty first line",
        ),
    ] {
        let out = client(&w.server.base, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", show(&out));
        assert!(
            text(&out.stderr).contains(needle),
            "{args:?}: {}",
            show(&out)
        );
    }
}

/// Runs the client with its stderr on a pseudo-terminal; returns its exit status, stdout
/// and what the terminal received.
fn on_terminal(args: &[&str]) -> (Option<i32>, String, String) {
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two descriptors into the given places.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors are ours from here on, each owned once.
    let (mut master, slave) = unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) };
    let mut child = Command::new(SERVER_BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        // Ends with EIO once the child, the last holder of the slave side, exits.
        let mut buf = [0u8; 4096];
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        seen
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    let status = child.wait().unwrap();
    let seen = reader.join().unwrap();
    (status.code(), text(&out), text(&seen))
}

#[test]
fn wait_draws_a_progress_bar_on_a_terminal() {
    let w = World::start("cli-pty", slow_clone());
    // 1 MiB that cannot be compressed, sent 4 KiB every 10 ms: over two seconds of download.
    let archive = gold_tar_gz_padded("box", 1 << 20);
    let checksum = sha1_hex(&archive);
    let url = w.files.add_with(
        "/slow.tar.gz",
        archive,
        Delivery::Trickle(Duration::from_millis(10)),
    );
    let base = w.server.base.clone();
    let (code, stdout, terminal) = on_terminal(&[
        "vm",
        "create",
        "--server",
        &base,
        "--image-url",
        &url,
        "--checksum",
        &checksum,
        "--wait",
    ]);
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nterminal:\n{terminal:?}");
    let ip = field(&stdout, "ip_address").unwrap();
    // Redrawn in place: carriage return and erase-line, a bar, bytes of total, a rate and
    // the time left; then the phases; then the verdict on its own line.
    assert!(terminal.contains("\r\x1b[K"), "{terminal:?}");
    let bar = terminal
        .split("\r\x1b[K")
        .find(|frame| frame.contains("downloading [") && frame.contains("/s  ETA "))
        .unwrap_or_else(|| panic!("no bar with rate and ETA: {terminal:?}"));
    assert!(
        bar.contains(" of 1.0 MiB") || bar.contains(" of 1.1 MiB"),
        "{bar:?}"
    );
    assert!(terminal.contains(": cloning"), "{terminal:?}");
    assert!(
        terminal.ends_with(&format!(": ready {ip}\r\n")),
        "{terminal:?}"
    );
    // The table on stdout, untouched by the bar.
    assert!(!stdout.contains('\r'), "{stdout:?}");
    assert!(http::request("GET", &w.server.url("/vms"), None, &[]).0 == 200);
}

#[test]
fn vm_log_prints_the_vmware_log_and_says_when_there_is_none() {
    let w = World::start("cli-log", ServerOptions::default());
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let out = client(&w.server.base, &["vm", "log", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let path = w.server.data_dir.join("vms").join(&id).join("vmware.log");
    let on_disk = std::fs::read(&path).unwrap();
    assert!(!on_disk.is_empty());
    assert_eq!(out.stdout, on_disk);
    // A VM that has not started has no log: the server's 404 and its code, exit 1.
    std::fs::remove_file(&path).unwrap();
    let out = client(&w.server.base, &["vm", "log", &id]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        text(&out.stderr).contains("vm-log-not-found"),
        "{}",
        show(&out)
    );
    let out = client(
        &w.server.base,
        &["vm", "log", "282ee68a-2e4d-4bd7-9c0e-7f37e12fc489"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(text(&out.stderr).contains("vm-not-found"), "{}", show(&out));
}

/// The README's settings tables against `--help`: the same settings, each
/// with its variable and its default. A default that differs by platform is written
/// `<macOS> (macOS), <Linux> (Linux)`; `~` is the home folder; `none` is no default.
#[test]
fn the_readme_lists_every_setting_with_the_default_help_shows() {
    let home = "/home/someone";
    let help = Command::new(SERVER_BIN)
        .arg("--help")
        .env("HOME", home)
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    // `  --flag   ENV   default`, each followed by an indented line of help.
    let from_help: Vec<(String, String, String)> = help
        .lines()
        .skip_while(|line| !line.starts_with("Settings"))
        .filter_map(|line| {
            let rest = line.strip_prefix("  --")?;
            let (flag, rest) = rest.split_once(' ')?;
            let (env, default) = rest.trim_start().split_once(' ')?;
            // `--help` and `--version` have no variable.
            if !env.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return None;
            }
            Some((
                format!("--{flag}"),
                env.to_string(),
                default.trim().to_string(),
            ))
        })
        .collect();
    assert!(from_help.len() > 40, "{help}");

    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("README has a Settings section");
    let platform = if cfg!(target_os = "macos") {
        "(macOS)"
    } else {
        "(Linux)"
    };
    // The section ends at the next `## `; its tables group the settings by concern, each
    // starting with a `| flag` header and its `| ---` rule.
    let section = table.split("\n## ").next().unwrap_or(table);
    let mut from_readme: Vec<(String, String, String)> = section
        .lines()
        .filter(|line| line.starts_with("| `--"))
        .map(|line| {
            let cells: Vec<&str> = line
                .split(" | ")
                .map(|c| c.trim_matches(['|', ' ']))
                .collect();
            let mut default = cells[2].to_string();
            if default.contains(" (macOS), ") {
                default = default
                    .split(", ")
                    .find_map(|part| part.strip_suffix(platform))
                    .unwrap_or_else(|| panic!("{line}: no {platform} default"))
                    .trim()
                    .to_string();
            }
            let mut default = default.replace('`', "");
            if default == "none" {
                default = "(none)".into();
            }
            if let Some(rest) = default.strip_prefix("~/") {
                default = format!("{home}/{rest}");
            }
            (
                cells[0].replace('`', ""),
                cells[1].replace('`', ""),
                default,
            )
        })
        .collect();
    // The README groups settings by concern, `--help` lists them as `src/config.rs` does:
    // compare them as sets, and a setting listed twice shows up as a difference.
    let mut from_help = from_help;
    from_readme.sort();
    from_help.sort();
    assert_eq!(
        from_readme.iter().map(|row| &row.0).collect::<Vec<_>>(),
        from_help.iter().map(|row| &row.0).collect::<Vec<_>>(),
        "the README's settings are not --help's"
    );
    for (readme_row, help_row) in from_readme.iter().zip(&from_help) {
        assert_eq!(
            readme_row, help_row,
            "README (left) and --help (right) differ"
        );
    }
}
