//! GETs are answered by threads of their own: calls that wait on vmrun (a DELETE whose
//! `vmrun stop` hangs) must not hold up polls, however many of them there are.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::http::FileServer;
use common::{gold_tar_gz, sha1_hex, Server, ServerOptions, TempDir};
use serde_json::json;

#[test]
fn polls_are_answered_while_every_slow_thread_waits_on_a_hung_vmrun() {
    let dir = TempDir::new("http-pools");
    let files = FileServer::start();
    let archive = gold_tar_gz("box");
    let checksum = sha1_hex(&archive);
    let url = files.add("/gold.tar.gz", archive);
    // Two threads for slow calls, and a stop deadline far beyond this test.
    let server = Server::start_with(
        dir.path(),
        ServerOptions {
            env: vec![],
            args: ["--http-threads", "2", "--vmrun-timeout-stop", "600"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        },
    );
    let body = json!({
        "cpus": 1, "memory": 1024, "network_type": "nat", "headless": true,
        "image": {"url": url, "checksum": checksum, "checksum_type": "sha1"},
    });
    let (status, vm) = server.create(&body);
    assert_eq!(status, 202, "{vm}");
    let id = vm["id"].as_str().unwrap().to_string();
    server.wait_ready(&id);

    let _reaper = HangReaper(server.sim_state.join("hang.pids"));
    server.set_faults("stop hang\n");
    // More DELETEs than slow threads: one hangs in `vmrun stop`, the others wait for it.
    let deletes: Vec<_> = (0..4)
        .map(|_| {
            let url = server.url(&format!("/vms/{id}"));
            thread::spawn(move || common::http::request("DELETE", &url, None, &[]).0)
        })
        .collect();
    let pids_file = server.sim_state.join("hang.pids");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !std::fs::read_to_string(&pids_file).is_ok_and(|t| !t.trim().is_empty()) {
        assert!(
            Instant::now() < deadline,
            "vmrun stop never ran:\n{}",
            server.log()
        );
        thread::sleep(Duration::from_millis(20));
    }

    let (status, vm) = server.get_vm(&id);
    assert_eq!(status, 200, "{vm}");
    assert_eq!(vm["progress"]["phase"], "deleting", "{vm}");
    let (status, list) = common::http::request("GET", &server.url("/vms"), None, &[]);
    assert_eq!(status, 200);
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(
        deletes.iter().all(|d| !d.is_finished()),
        "the DELETEs must still be waiting on the hung vmrun"
    );

    // End the hung simulator and the child it left; the DELETEs behind it then stop the VM
    // and delete it.
    server.set_faults("");
    kill_hung(&pids_file);
    let statuses: Vec<u16> = deletes.into_iter().map(|d| d.join().unwrap()).collect();
    assert!(statuses.contains(&204), "{statuses:?}\n{}", server.log());
    assert_eq!(server.get_vm(&id).0, 404);
}

/// The processes a `hang` fault left are ours: end them by id.
fn kill_hung(pids_file: &std::path::Path) {
    let pids = std::fs::read_to_string(pids_file).unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Also when the test fails: a hung simulator would otherwise outlive it.
struct HangReaper(std::path::PathBuf);

impl Drop for HangReaper {
    fn drop(&mut self) {
        kill_hung(&self.0);
    }
}
