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
