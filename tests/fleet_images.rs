//! The image cache API through the real binary: listing, pre-warming through the same
//! single flight as creates, deletion refused while linked clones depend on an image, and
//! least-recently-used eviction under a budget.

mod common;

use common::{eventually, http::call_str, image_body, options, World};
use common::{gold_tar_gz, sha1_hex};
use serde_json::{json, Value};

fn images(world: &World) -> Vec<Value> {
    let answer = call_str("GET", &world.server.url("/images"), None, &[]);
    assert_eq!(answer.status, 200, "{}", answer.text());
    answer.json().as_array().cloned().unwrap_or_default()
}

fn prewarm_body(url: &str, checksum: &str) -> String {
    json!({"url": url, "checksum": checksum, "checksum_type": "sha1"}).to_string()
}

#[test]
fn list_then_refuse_to_delete_an_image_clones_depend_on() {
    let w = World::start("images-list", options(&[]));
    assert!(images(&w).is_empty());
    let id = w.create(&w.body());
    w.server.wait_ready(&id);

    let list = images(&w);
    assert_eq!(list.len(), 1, "{list:?}");
    let image = &list[0];
    assert_eq!(image["checksum"], w.checksum.as_str());
    assert_eq!(image["state"], "ready");
    assert_eq!(image["url"], w.url.as_str());
    assert_eq!(image["checksum_type"], "sha1");
    assert_eq!(image["vms"], json!([id]));
    assert!(image["size_bytes"].as_u64().unwrap() > 0, "{image}");
    let last_used = image["last_used"].as_str().unwrap();
    assert!(
        osx_builder::sys::time::parse_rfc3339_ms(last_used).is_some(),
        "{image}"
    );
    let one = call_str(
        "GET",
        &w.server
            .url(&format!("/images/{}", w.checksum.to_uppercase())),
        None,
        &[],
    );
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["checksum"], w.checksum.as_str());

    let image_url = w.server.url(&format!("/images/{}", w.checksum));
    let refused = call_str("DELETE", &image_url, None, &[]);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["code"], "image-in-use");
    assert!(refused.json()["message"].as_str().unwrap().contains(&id));
    assert!(w.server.data_dir.join("gold").join(&w.checksum).exists());
    // The VM still runs from it.
    assert_eq!(w.server.wait_ready(&id)["status"], "running");

    assert_eq!(w.server.delete_vm(&id).0, 204);
    let deleted = call_str("DELETE", &image_url, None, &[]);
    assert_eq!(deleted.status, 204, "{}", deleted.text());
    assert!(!w.server.data_dir.join("gold").join(&w.checksum).exists());
    assert!(images(&w).is_empty());
    for (url, code) in [
        (image_url.clone(), "image-not-found"),
        (w.server.url("/images/not-a-checksum"), "image-not-found"),
        (w.server.url("/images/..%2Fvms"), "image-not-found"),
    ] {
        let answer = call_str("DELETE", &url, None, &[]);
        assert_eq!(answer.status, 404, "{url}");
        assert_eq!(answer.json()["code"], code);
    }
    assert!(w
        .server
        .wait_log(&format!("gold image {} deleted", w.checksum)));

    // After the delete a create downloads the image again, and the base snapshot is made
    // afresh on the new copy.
    let again = w.create(&w.body());
    w.server.wait_ready(&again);
    assert_eq!(w.files.hits("/gold.tar.gz"), 2);
}

#[test]
fn a_prewarmed_image_is_downloaded_once_and_used_by_creates() {
    let w = World::start("images-prewarm", options(&[]));
    let body = prewarm_body(&w.url, &w.checksum);
    let started = call_str("POST", &w.server.url("/images"), Some(&body), &[]);
    assert_eq!(started.status, 202, "{}", started.text());
    assert_eq!(started.json()["checksum"], w.checksum.as_str());
    assert_eq!(started.json()["state"], "downloading");
    eventually("the pre-warmed image to be ready", || {
        let answer = call_str(
            "GET",
            &w.server.url(&format!("/images/{}", w.checksum)),
            None,
            &[],
        );
        (answer.status == 200 && answer.json()["state"] == "ready").then_some(())
    });
    eventually("the pre-warm's log line", || {
        w.server
            .log()
            .contains(&format!("gold image {} pre-warmed", w.checksum))
            .then_some(())
    });
    // Asked again: it is there.
    let again = call_str("POST", &w.server.url("/images"), Some(&body), &[]);
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["state"], "ready");
    assert_eq!(again.json()["vms"], json!([]));

    let id = w.create(&w.body());
    w.server.wait_ready(&id);
    assert_eq!(
        w.files.hits("/gold.tar.gz"),
        1,
        "the create used the pre-warmed image"
    );

    // A pre-warm that fails says why.
    let broken = gold_tar_gz("broken");
    let wrong_sum = sha1_hex(b"something else");
    let broken_url = w.files.add("/broken.tar.gz", broken);
    let answer = call_str(
        "POST",
        &w.server.url("/images"),
        Some(&prewarm_body(&broken_url, &wrong_sum)),
        &[],
    );
    assert_eq!(answer.status, 202);
    let failed = eventually("the failed pre-warm to show", || {
        images(&w)
            .into_iter()
            .find(|i| i["checksum"] == wrong_sum.as_str() && i["state"] == "failed")
    });
    assert_eq!(failed["error"]["code"], "checksum-mismatch", "{failed}");
    // Forgetting a failure is a delete too.
    let forgot = call_str(
        "DELETE",
        &w.server.url(&format!("/images/{wrong_sum}")),
        None,
        &[],
    );
    assert_eq!(forgot.status, 204);
    assert_eq!(images(&w).len(), 1);

    for (body, code) in [
        (r#"{"checksum": "x"}"#.to_string(), "invalid-image-url"),
        (prewarm_body("ftp://h/x", &w.checksum), "invalid-image-url"),
        (prewarm_body(&w.url, "abc"), "invalid-checksum"),
        ("[1]".to_string(), "invalid-image"),
        ("{".to_string(), "invalid-json"),
    ] {
        let answer = call_str("POST", &w.server.url("/images"), Some(&body), &[]);
        assert_eq!(answer.json()["code"], code, "{body}: {}", answer.text());
    }
}

#[test]
fn over_the_budget_the_least_recently_used_unused_image_is_evicted() {
    // A one-byte budget: every image no VM uses is over it.
    let w = World::start("images-budget", options(&["--cache-budget", "1"]));
    let a = w.create(&w.body());
    w.server.wait_ready(&a);
    assert_eq!(w.server.delete_vm(&a).0, 204);
    // Image A is now unused; making a VM from image B publishes B, which runs eviction.
    let other = gold_tar_gz("other");
    let other_sum = sha1_hex(&other);
    let other_url = w.files.add("/other.tar.gz", other);
    let b = w.create(&image_body(&other_url, &other_sum));
    w.server.wait_ready(&b);
    eventually("image A to be evicted", || {
        (!w.server.data_dir.join("gold").join(&w.checksum).exists()).then_some(())
    });
    let list = images(&w);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        list[0]["checksum"],
        other_sum.as_str(),
        "B is used by a VM: kept"
    );
    let log = eventually("the eviction's log line", || {
        let log = w.server.log();
        log.contains(&format!("evicting gold image {}", w.checksum))
            .then_some(log)
    });
    assert!(
        log.contains("over its budget of 1 (--cache-budget)"),
        "{log}"
    );
    // The VM made from B is untouched.
    assert_eq!(w.server.wait_ready(&b)["status"], "running");
    let metrics = call_str("GET", &w.server.url("/metrics"), None, &[]).text();
    let cache_bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("osx_builder_image_cache_bytes "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(cache_bytes, list[0]["size_bytes"].as_u64().unwrap());
}
