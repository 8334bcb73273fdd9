//! The server on each hypervisor: VMware through `vmrun-sim`, tart through `tart-sim`.
//! `--hypervisor` chooses the driver, and the start-up log, `/healthz` and a create name
//! what is missing when its tool is.

mod common;

use common::http;
use common::{options, Hv, Server, TempDir};

#[test]
fn tart_is_chosen_and_named_with_its_version_and_two_vms_by_default() {
    let dir = TempDir::new("hv-tart-named");
    let data = dir.path().join("data");
    let args: Vec<String> = Hv::Tart.args();
    // As an operator starts it: no --max-vms, so tart's default applies.
    let server = Server::launch(&data, &Hv::Tart.sim_state(dir.path()), &args, &[]);
    assert!(
        server.wait_log("hypervisor tart: tart 2.32.1 at "),
        "{}",
        server.log()
    );
    assert!(server
        .log()
        .contains(&format!("TART_HOME={}", data.join("tart").display())));
    let health = common::eventually("tart list to answer", || {
        let (status, health) = http::request("GET", &server.url("/healthz"), None, &[]);
        (status == 200).then_some(health)
    });
    assert_eq!(health["hypervisor"], "tart");
    assert!(health["checks"].get("vmrun").is_none(), "{health}");
    let check = health["checks"]["tart"]["message"].as_str().unwrap();
    assert!(check.starts_with("tart list answered"), "{check}");
    let (_, metrics) = http::request_raw("GET", &server.url("/metrics"), None, &[]);
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert_eq!(
        common::metric(&metrics, "osx_builder_capacity_limit"),
        Some(2.0),
        "{metrics}"
    );
}

#[test]
fn a_missing_tool_is_named_at_start_in_healthz_and_on_create() {
    for hv in [Hv::Vmware, Hv::Tart] {
        let dir = TempDir::new("hv-missing");
        let missing = dir.path().join("no-such-tool");
        let missing = missing.to_str().unwrap();
        let opts = match hv {
            Hv::Vmware => common::options_env(&[("VMWARE_VMRUN_PATH", missing)], &[]),
            Hv::Tart => options(&["--tart-path", missing]),
        };
        let server = Server::start_with(dir.path(), opts.on(hv));
        let tool = hv.tool();
        assert!(
            server.wait_log(&format!("{tool} not found at {missing}")),
            "{}",
            server.log()
        );
        assert!(server.log().contains("every create will fail"));
        let (status, health) = http::request("GET", &server.url("/healthz"), None, &[]);
        assert_eq!(status, 503, "{health}");
        assert_eq!(health["hypervisor"], hv.name());
        assert_eq!(health["failing"], serde_json::json!([tool]), "{health}");
        let (status, error) = server.create(&common::image_body(
            "http://127.0.0.1:9/x.tar.gz",
            &"a".repeat(40),
        ));
        assert_eq!(status, 500, "{error}");
        assert_eq!(error["code"], format!("{tool}-not-found"));
        let hint = match hv {
            Hv::Vmware => "VMWARE_VMRUN_PATH",
            Hv::Tart => "brew install cirruslabs/cli/tart",
        };
        assert!(error["message"].as_str().unwrap().contains(hint), "{error}");
    }
}
