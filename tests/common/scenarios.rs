//! The API's scenarios, each a function of the hypervisor it runs on: the same requests and
//! the same assertions against VMware (`vmrun-sim`) and tart (`tart-sim`). Where the
//! hypervisors differ (how a test makes a call fail, or powers a VM off behind the server's
//! back), [`Hv`]'s helpers say it once.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::http;
use super::{eventually, options_env, Hv, Server, ServerOptions, World};

impl Hv {
    /// A fault rule that makes every start of a VM fail with `words` (vmrun: `start`,
    /// tart: `run`), in the simulator's syntax.
    pub fn start_fails(self, words: &str) -> String {
        match self {
            Hv::Vmware => format!("start fail {words}"),
            Hv::Tart => format!("run fail 1 {words}"),
        }
    }

    /// A fault rule that makes the start hang until the server's deadline kills it.
    pub fn start_hangs(self) -> &'static str {
        match self {
            Hv::Vmware => "start hang",
            Hv::Tart => "run hang",
        }
    }

    /// Powers the VM `id` off behind the server's back, as a person or its guest would.
    pub fn power_off(self, server: &Server, id: &str) {
        self.power_off_in(&server.data_dir.join(".."), id);
    }

    /// The same for the server whose test folder is `root`, running or not.
    pub fn power_off_in(self, root: &Path, id: &str) {
        match self {
            Hv::Vmware => {
                let vmx = root.join(format!("data/vms/{id}/{id}.vmx"));
                let out = Command::new(super::SIM_BIN)
                    .args(["stop", vmx.to_str().unwrap(), "hard"])
                    .env("VMRUN_SIM_STATE", self.sim_state(root))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{out:?}");
            }
            // The guest shuts down: its runner ends with tart's words.
            Hv::Tart => {
                tell_runner(&self.sim_state(root), id, "shutdown");
                wait_until("the runner to end", || {
                    !self.running_in(root).contains(&id.to_string())
                });
            }
        }
    }

    /// The ids of the server's VMs the simulator runs now.
    pub fn running(self, server: &Server) -> Vec<String> {
        self.running_in(&server.data_dir.join(".."))
    }

    /// The same for the server whose test folder is `root`, running or not.
    pub fn running_in(self, root: &Path) -> Vec<String> {
        match self {
            Hv::Vmware => {
                let out = Command::new(super::SIM_BIN)
                    .arg("list")
                    .env("VMRUN_SIM_STATE", self.sim_state(root))
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .skip(1)
                    .filter_map(|vmx| Some(Path::new(vmx).file_stem()?.to_str()?.to_string()))
                    .collect()
            }
            Hv::Tart => {
                let out = Command::new(super::TART_SIM_BIN)
                    .args(["list", "--format", "json"])
                    .env("TART_HOME", root.join("data/tart"))
                    .output()
                    .unwrap();
                let list: Value = serde_json::from_slice(&out.stdout).unwrap();
                list.as_array()
                    .unwrap()
                    .iter()
                    .filter(|vm| vm["Running"] == true)
                    .filter_map(|vm| vm["Name"].as_str()?.strip_prefix("osxb-"))
                    .filter(|name| !name.starts_with("gold-"))
                    .map(str::to_string)
                    .collect()
            }
        }
    }
}

/// tart only: the runner of the VM `id` acts as `what` says (`shutdown`, `crash`) within
/// 20 ms, behind the server's back.
pub fn tell_runner(sim_state: &Path, id: &str, what: &str) {
    let control = sim_state.join("control");
    std::fs::create_dir_all(&control).unwrap();
    std::fs::write(control.join(format!("osxb-{id}")), what).unwrap();
}

/// Polls `done` until it holds, or panics with `what` after a minute.
pub fn wait_until(what: &str, done: impl Fn() -> bool) {
    eventually(what, || done().then_some(()));
}

/// The VM's record folder, `vms/<id>/`.
pub fn vm_record(server: &Server, id: &str) -> PathBuf {
    server.data_dir.join("vms").join(id)
}

/// Switches that make the simulators quick: the guest gets its address a moment after
/// its start.
pub fn quick(hv: Hv, args: &[&str]) -> ServerOptions {
    let env: &[(&str, &str)] = match hv {
        Hv::Vmware => &[],
        Hv::Tart => &[("TART_SIM_IP_POLL_MS", "20"), ("TART_SIM_BOOT_MS", "100")],
    };
    options_env(env, args).on(hv)
}

/// Create (202 at once), running with an IP, listed, its log served, deleted (204, then
/// 404, the hypervisor runs it no longer and its folder is gone).
pub fn create_run_delete(hv: Hv) {
    let w = World::start("sc-life", quick(hv, &["--list-interval", "0.5"]));
    let mut body = w.body();
    body["cpus"] = json!(2);
    body["memory"] = json!(3072);
    body["labels"] = json!({"team": "ios"});
    let id = w.create(&body);
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["status"], "running");
    assert_eq!(
        (vm["cpus"].as_u64(), vm["memory"].as_u64()),
        (Some(2), Some(3072))
    );
    assert!(vm["ip_source"].is_string(), "{vm}");
    assert_eq!(hv.running(&w.server), vec![id.clone()]);
    let (status, list) = http::request("GET", &w.server.url("/vms?label=team=ios"), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (status, _) = http::request_raw("GET", &w.server.url(&format!("/vms/{id}/log")), None, &[]);
    assert_eq!(status, 200);

    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 204);
    let (status, _) = w.server.get_vm(&id);
    assert_eq!(status, 404);
    assert!(hv.running(&w.server).is_empty());
    assert!(!vm_record(&w.server, &id).exists());
    if hv == Hv::Tart {
        let clone = w.server.data_dir.join(format!("tart/vms/osxb-{id}"));
        assert!(!clone.exists(), "{}", clone.display());
    }
}

/// A VM powered off behind the server's back is `stopped` within seconds (the listing
/// every `--list-interval` sees it, not the minute's reconcile).
pub fn powered_off_behind_its_back(hv: Hv) {
    let w = World::start(
        "sc-off",
        quick(
            hv,
            &["--list-interval", "0.3", "--reconcile-interval", "600"],
        ),
    );
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    hv.power_off(&w.server, &id);
    let vm = w
        .server
        .wait_for(&id, "stopped", |vm| vm["status"] != "running");
    assert_eq!(vm["status"], "stopped", "{vm}");
    assert!(vm["error"].is_null(), "{vm}");
    assert!(w.server.wait_log(&format!("vm={id} is no longer running")));
    // A stopped VM is deleted as any other.
    let (status, _) = w.server.delete_vm(&id);
    assert_eq!(status, 204);
}

/// The server killed (SIGKILL) and started again: running VMs keep running and are
/// adopted with their records (IP, lease, labels); one powered off meanwhile says
/// `stopped`; the gold image is not fetched again; a new create works.
pub fn restart_adopts_running_vms(hv: Hv) {
    let w = World::start("sc-restart", quick(hv, &["--list-interval", "0.3"]));
    let mut body = w.body();
    body["ttl"] = json!(3600);
    body["labels"] = json!({"job": "42"});
    let ids: Vec<String> = (0..2).map(|_| w.create(&body)).collect();
    let before: Vec<Value> = ids.iter().map(|id| w.server.wait_ready(id)).collect();
    let dir = w.dir.path().to_path_buf();
    let World {
        dir: tmp,
        files,
        server,
        url,
        checksum,
    } = w;
    server.kill();
    // The VMs outlived the server.
    let mut alive = hv.running_in(&dir);
    alive.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(alive, want);
    hv.power_off_in(&dir, &ids[1]);
    let server = Server::start_with(&dir, quick(hv, &["--list-interval", "0.3"]));
    let vm = server.get_vm(&ids[0]).1;
    assert_eq!(vm["status"], "running", "{vm}");
    assert_eq!(vm["ip_address"], before[0]["ip_address"]);
    assert_eq!(vm["expires_at"], before[0]["expires_at"]);
    assert_eq!(vm["labels"], json!({"job": "42"}));
    let vm = server.wait_for(&ids[1], "stopped", |vm| vm["status"] != "running");
    assert_eq!(vm["status"], "stopped", "{vm}");
    assert_eq!(files.hits("/gold.tar.gz"), 1, "the gold image is reused");
    let (status, vm) = server.create(&super::image_body(&url, &checksum));
    assert_eq!(status, 202, "{vm}");
    server.wait_ready(vm["id"].as_str().unwrap());
    for id in [&ids[0], &ids[1]] {
        assert_eq!(server.delete_vm(id).0, 204);
    }
    drop(server);
    drop(tmp);
}

/// A VM whose record was lost (its `osx-builder.json` removed while the server was down) is
/// adopted at the next start from what the hypervisor's own files say of it: running, its
/// size, its image; it is then deleted like any other, and the hypervisor runs it no longer.
pub fn a_lost_record_is_adopted(hv: Hv) {
    let w = World::start("sc-lost", quick(hv, &["--list-interval", "0.3"]));
    let mut body = w.body();
    body["cpus"] = json!(3);
    body["memory"] = json!(3072);
    let id = w.create(&body);
    w.server.wait_ready(&id);
    let record = vm_record(&w.server, &id).join("osx-builder.json");
    let dir = w.dir.path().to_path_buf();
    let World {
        dir: tmp,
        server,
        checksum,
        ..
    } = w;
    server.kill();
    std::fs::remove_file(&record).unwrap();
    let server = Server::start_with(&dir, quick(hv, &["--list-interval", "0.3"]));
    assert!(
        server.log().contains(&format!("vm={id} adopted from")),
        "{}",
        server.log()
    );
    let vm = server.wait_for(&id, "its IP again", |vm| vm["ip_address"] != "");
    assert_eq!(vm["status"], "running", "{vm}");
    assert_eq!(
        (vm["cpus"].as_u64(), vm["memory"].as_u64()),
        (Some(3), Some(3072)),
        "{vm}"
    );
    assert_eq!(vm["image"]["checksum"], checksum.as_str(), "{vm}");
    assert_eq!(server.delete_vm(&id).0, 204);
    assert!(hv.running_in(&dir).is_empty());
    drop(server);
    drop(tmp);
}

/// `--max-vms 2`: two VMs run, a third create is `503 capacity-exhausted` (nothing
/// recorded), and once one is deleted a create goes through.
pub fn capacity(hv: Hv) {
    let w = World::start("sc-capacity", quick(hv, &["--max-vms", "2"]));
    let ids: Vec<String> = (0..2).map(|_| w.create(&w.body())).collect();
    for id in &ids {
        w.server.wait_ready(id);
    }
    let (status, error) = w.server.create(&w.body());
    assert_eq!(status, 503, "{error}");
    assert_eq!(error["code"], "capacity-exhausted");
    assert_eq!(w.vm_count(), 2);
    assert_eq!(w.server.delete_vm(&ids[0]).0, 204);
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
}

impl Hv {
    /// The value the guest of VM `id` reads under guestinfo `key`: VMware's guest
    /// variable (`vmware-rpctool "info-get guestinfo.KEY"` in the guest), or the file
    /// `KEY` of the folder tart shares into it.
    pub fn guest_value(self, server: &Server, id: &str, key: &str) -> Option<String> {
        match self {
            Hv::Vmware => {
                let vmx = vm_record(server, id).join(format!("{id}.vmx"));
                let out = server.sim(&["readVariable", vmx.to_str().unwrap(), "guestVar", key]);
                (!out.is_empty()).then(|| out.trim_end_matches('\n').to_string())
            }
            Hv::Tart => {
                let run = server.sim_state.join(format!("runs/osxb-{id}.json"));
                let run: Value = serde_json::from_slice(&std::fs::read(run).ok()?).ok()?;
                let share = run["dirs"]
                    .as_array()?
                    .iter()
                    .find(|d| d["name"] == "osx-builder")?;
                assert_eq!(share["read_only"], true, "{run}");
                std::fs::read_to_string(Path::new(share["path"].as_str()?).join(key)).ok()
            }
        }
    }

    /// Simulator switches: the first `n` boots of each VM hang (no address ever).
    pub fn dead_boots(self, n: &str) -> (&'static str, String) {
        match self {
            Hv::Vmware => ("VMRUN_SIM_DEAD_BOOTS", n.to_string()),
            Hv::Tart => ("TART_SIM_DEAD_BOOTS", n.to_string()),
        }
    }
}

const SECRET: &str = "s3cret-guestinfo-value";

/// guestinfo reaches the guest of a cold create (before its start) and of a VM handed
/// out by a warm pool (at hand-out), and is nowhere else: not in answers, the list or the
/// log, and in no file outside the VM's own folder.
pub fn guestinfo_cold_and_pooled(hv: Hv) {
    let w = World::start("sc-guestinfo", quick(hv, &["--list-interval", "0.5"]));
    let mut body = w.body();
    body["guestinfo"] = json!({"name": format!("{SECRET}-cold")});
    let cold = w.create(&body);
    let answer = w.server.wait_ready(&cold);
    assert_eq!(answer["guestinfo_keys"], json!(["name"]));
    assert_eq!(
        hv.guest_value(&w.server, &cold, "name").as_deref(),
        Some(format!("{SECRET}-cold").as_str())
    );

    let mut spec = w.body();
    spec["size"] = json!(1);
    let put = http::call_str(
        "PUT",
        &w.server.url("/pools/p"),
        Some(&spec.to_string()),
        &[],
    );
    assert_eq!(put.status, 201, "{}", put.text());
    eventually("the pool's VM", || {
        let view = http::call_str("GET", &w.server.url("/pools/p"), None, &[]).json();
        (view["ready"] == 1).then_some(())
    });
    body["guestinfo"] = json!({"name": format!("{SECRET}-pool")});
    let (status, handed) = w.server.create(&body);
    assert_eq!(status, 202, "{handed}");
    assert_eq!(handed["status"], "running", "a warm VM: {handed}");
    let pooled = handed["id"].as_str().unwrap().to_string();
    assert_eq!(
        hv.guest_value(&w.server, &pooled, "name").as_deref(),
        Some(format!("{SECRET}-pool").as_str())
    );

    let list = http::call_str("GET", &w.server.url("/vms"), None, &[]).text();
    for text in [list, answer.to_string(), handed.to_string()] {
        assert!(!text.contains(SECRET), "{text}");
    }
    assert!(!w.server.log().contains(SECRET));
    for file in super::files_containing(&w.server.data_dir, SECRET) {
        let inside = [&cold, &pooled]
            .iter()
            .any(|id| Path::new(&file).starts_with(vm_record(&w.server, id)));
        assert!(inside, "{file} holds a guestinfo value");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{file}: {mode:o}");
    }
    for id in [&cold, &pooled] {
        assert_eq!(w.server.delete_vm(id).0, 204);
    }
}

/// A guest whose first boot hangs: no address within `--boot-timeout`, one hard reset,
/// and the second boot comes up with its address.
pub fn boot_watchdog_resets_once(hv: Hv) {
    let (key, value) = hv.dead_boots("1");
    let mut opts = quick(hv, &["--boot-timeout", "1"]);
    opts.env.push((key.to_string(), value));
    let w = World::start("sc-boot", opts);
    let id = w.create(&w.body());
    let vm = w.server.wait_ready(&id);
    assert_eq!(vm["status"], "running");
    assert!(w
        .server
        .wait_log("the guest did not boot; retrying once with"));
    assert_eq!(hv.running(&w.server), vec![id]);
}

/// A lease ends the VM (destroyed as a DELETE does) unless renewed; the callback carries
/// the running VM with its id; a create repeated with its idempotency key answers the
/// same VM; labels filter the list; drain refuses creates until undrained.
pub fn leases_callbacks_idempotency_drain(hv: Hv) {
    let callbacks = super::CallbackReceiver::start();
    let w = World::start("sc-lease", quick(hv, &[]));
    let mut body = w.body();
    body["ttl"] = json!(2);
    body["callback_url"] = json!(callbacks.url);
    body["labels"] = json!({"lease": "short"});
    body["name"] = json!("build-1234");
    let id = w.create(&body);
    let (status, again) = w.server.create(&body);
    assert!(status == 200 || status == 202, "{status} {again}");
    assert_eq!(
        again["id"],
        id.as_str(),
        "the idempotency key names the same VM"
    );
    w.server.wait_ready(&id);
    let posted = callbacks.wait_for(1);
    assert_eq!(posted.len(), 1, "{posted:?}");
    assert_eq!(posted[0]["id"], id.as_str());
    assert_eq!(posted[0]["status"], "running");
    let renew = http::call_str(
        "POST",
        &w.server.url(&format!("/vms/{id}/renew")),
        Some(r#"{"ttl": 3}"#),
        &[],
    );
    assert_eq!(renew.status, 200, "{}", renew.text());
    let (status, list) = http::request("GET", &w.server.url("/vms?label=lease=short"), None, &[]);
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    // Drain: a create is refused, the VM lives on.
    assert_eq!(
        http::call_str("POST", &w.server.url("/drain"), None, &[]).status,
        200
    );
    let (status, error) = w.server.create(&w.body());
    assert_eq!((status, error["code"].as_str()), (503, Some("draining")));
    assert_eq!(
        http::call_str("POST", &w.server.url("/undrain"), None, &[]).status,
        200
    );
    // The renewed lease ends: the VM is destroyed, its clone with it.
    eventually("the lease to end the VM", || {
        (w.server.get_vm(&id).0 == 404).then_some(())
    });
    assert!(hv.running(&w.server).is_empty());
    assert!(!vm_record(&w.server, &id).exists());
}

/// What `/metrics`, `/healthz` and the command line say of a host with one VM.
pub fn metrics_health_and_cli(hv: Hv) {
    let w = World::start("sc-ops", quick(hv, &[]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let metrics = http::call_str("GET", &w.server.url("/metrics"), None, &[]).text();
    assert_eq!(
        super::metric(&metrics, "osx_builder_vms{status=\"running\"}"),
        Some(1.0),
        "{metrics}"
    );
    let health = eventually("a healthy host", || {
        let (status, health) = http::request("GET", &w.server.url("/healthz"), None, &[]);
        (status == 200).then_some(health)
    });
    assert_eq!(health["hypervisor"], hv.name());
    assert_eq!(health["checks"][hv.tool()]["ok"], true, "{health}");
    let out = Command::new(super::SERVER_BIN)
        .args(["vm", "list", "-q", "--server", &w.server.base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id);
    let out = Command::new(super::SERVER_BIN)
        .args(["vm", "delete", &id, "--server", &w.server.base])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(hv.running(&w.server).is_empty());
}

impl Hv {
    /// A fault rule that makes the start take `ms` longer.
    pub fn start_delay(self, ms: u64) -> String {
        match self {
            Hv::Vmware => format!("start delay {ms}"),
            Hv::Tart => format!("run delay {ms}"),
        }
    }

    /// A fault rule that makes the next IP query fail with `words`, once.
    pub fn ip_glitch(self, words: &str) -> String {
        match self {
            Hv::Vmware => format!("getGuestIPAddress once fail {words}"),
            Hv::Tart => format!("ip once fail 1 {words}"),
        }
    }

    /// A fault rule that makes the next destruction of a VM fail with `words`, once.
    pub fn delete_fails_once(self, words: &str) -> String {
        match self {
            Hv::Vmware => format!("deleteVM once fail {words}"),
            Hv::Tart => format!("delete once fail 1 {words}"),
        }
    }
}

/// The server is killed while a VM starts (the start outlives it); started again, it finds
/// the VM running and watches it to its IP.
pub fn killed_while_starting(hv: Hv) {
    let w = World::start("sc-kill-start", quick(hv, &["--list-interval", "0.3"]));
    w.server.set_faults(&hv.start_delay(1500));
    let id = w.create(&w.body());
    w.server
        .wait_for(&id, "starting", |vm| vm["progress"]["phase"] == "starting");
    // The record says starting just before the call: the call itself must be under way.
    let command = match hv {
        Hv::Vmware => " start ",
        Hv::Tart => " run ",
    };
    wait_until("the start call", || {
        let out = Command::new("ps").args(["-eo", "args="]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|line| line.contains("-sim") && line.contains(&id) && line.contains(command))
    });
    let World {
        dir, files, server, ..
    } = w;
    server.kill();
    std::fs::write(hv.sim_state(dir.path()).join("faults"), "").unwrap();
    let server = Server::start_with(dir.path(), quick(hv, &["--list-interval", "0.3"]));
    let vm = server.wait_ready(&id);
    assert_eq!(vm["status"], "running");
    assert_eq!(hv.running(&server), vec![id.clone()]);
    assert_eq!(server.delete_vm(&id).0, 204);
    drop((server, files));
}

/// Each hypervisor's failures, as its simulator fakes them: a start it refuses fails the
/// VM with the tool's code and words; an IP query that fails once is retried; a destroy
/// that fails answers 500 `vm-delete-error` with the tool's words and the next DELETE
/// goes through.
pub fn faults(hv: Hv) {
    let w = World::start("sc-faults", quick(hv, &[]));
    let tool = hv.tool();
    w.server.set_faults(&hv.start_fails("the host said no"));
    let id = w.create(&w.body());
    let vm = w.server.wait_failed(&id);
    assert_eq!(vm["error"]["code"], format!("{tool}-failed"), "{vm}");
    assert!(
        vm["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the host said no"),
        "{vm}"
    );
    assert!(
        hv.running(&w.server).is_empty(),
        "a failed start holds no place"
    );
    assert_eq!(w.server.delete_vm(&id).0, 204);

    w.server.set_faults(&hv.ip_glitch("a passing glitch"));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    assert!(w.server.wait_log("a passing glitch"));

    w.server.set_faults(&hv.delete_fails_once("disk is busy"));
    let (status, error) = w.server.delete_vm(&id);
    assert_eq!(status, 500, "{error}");
    assert_eq!(error["code"], "vm-delete-error");
    assert!(
        error["message"].as_str().unwrap().contains("disk is busy"),
        "{error}"
    );
    assert_eq!(w.server.delete_vm(&id).0, 204);
    assert_eq!(w.server.get_vm(&id).0, 404);
}

/// The gold image is listed once cached, taken out by DELETE /images once no VM needs it,
/// and fetched again by the next create.
pub fn images(hv: Hv) {
    let w = World::start("sc-images", quick(hv, &[]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    let (status, list) = http::request("GET", &w.server.url("/images"), None, &[]);
    assert_eq!(status, 200);
    let images = list.as_array().unwrap();
    assert_eq!(images.len(), 1, "{list}");
    assert_eq!(images[0]["checksum"], w.checksum.as_str());
    assert_eq!(images[0]["state"], "ready", "{list}");
    assert_eq!(w.server.delete_vm(&id).0, 204);
    let url = w.server.url(&format!("/images/{}", w.checksum));
    assert_eq!(http::call_str("DELETE", &url, None, &[]).status, 204);
    let (_, list) = http::request("GET", &w.server.url("/images"), None, &[]);
    assert_eq!(list, json!([]));
    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    assert_eq!(w.files.hits("/gold.tar.gz"), 2);
}
