//! Tables for people. `--json` prints the server's objects instead, untouched.

use serde_json::Value;

/// Columns padded to their widest cell; the last one is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

/// The seed's `""` while provisioning reads badly in a table.
pub fn status_word(vm: &Value) -> &str {
    match vm["status"].as_str() {
        Some("") | None => "provisioning",
        Some(status) => status,
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

/// Powers of 1024, one decimal: `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    crate::image::extract::human_bytes(n)
}

/// One VM, a field a line.
pub fn vm_table(vm: &Value) -> String {
    let mut rows = vec![
        ("id", text(&vm["id"])),
        ("status", status_word(vm).to_string()),
        ("phase", text(&vm["progress"]["phase"])),
        ("ip_address", text(&vm["ip_address"])),
        ("image", text(&vm["image"]["url"])),
        ("checksum", text(&vm["image"]["checksum"])),
        ("cpus", text(&vm["cpus"])),
        ("memory", text(&vm["memory"])),
        ("network_type", text(&vm["network_type"])),
        ("guest_os", text(&vm["guest_os"])),
        ("created_at", text(&vm["created_at"])),
    ];
    // In a fleet: where it runs.
    if vm.get("host").is_some() {
        rows.insert(1, ("host", text(&vm["host"])));
    }
    for key in ["expires_at", "name"] {
        if vm.get(key).is_some() {
            rows.push((key, text(&vm[key])));
        }
    }
    if let Some(Value::Object(labels)) = vm.get("labels") {
        let joined: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect();
        rows.push(("labels", joined.join(",")));
    }
    if let Value::Object(error) = &vm["error"] {
        rows.push((
            "error",
            format!("{}: {}", text(&error["code"]), text(&error["message"])),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {}\n", or_dash(v.clone())))
        .collect()
}

/// In a fleet each VM names its host: a HOST column then.
pub fn vm_list_table(vms: &[Value]) -> String {
    let fleet = vms.iter().any(|vm| vm.get("host").is_some());
    let rows: Vec<Vec<String>> = vms
        .iter()
        .map(|vm| {
            let mut row = vec![
                text(&vm["id"]),
                status_word(vm).to_string(),
                text(&vm["progress"]["phase"]),
                or_dash(text(&vm["ip_address"])),
                or_dash(text(&vm["pool"])),
                or_dash(labels(&vm["labels"])),
                text(&vm["cpus"]),
                text(&vm["memory"]),
                or_dash(text(&vm["expires_at"])),
                text(&vm["created_at"]),
            ];
            if fleet {
                row.insert(1, text(&vm["host"]));
            }
            row
        })
        .collect();
    let mut header = vec![
        "ID", "STATUS", "PHASE", "IP", "POOL", "LABELS", "CPUS", "MEMORY", "EXPIRES", "CREATED",
    ];
    if fleet {
        header.insert(1, "HOST");
    }
    table(&header, &rows)
}

/// `k=v,k2=v2`, in the order the server gave them.
fn labels(labels: &Value) -> String {
    match labels {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(","),
        _ => String::new(),
    }
}

/// In a fleet each image says which hosts hold it: a HOSTS column then.
pub fn image_list_table(images: &[Value]) -> String {
    let fleet = images.iter().any(|image| image["hosts"].is_array());
    let rows: Vec<Vec<String>> = images
        .iter()
        .map(|image| {
            let progress = match &image["progress"] {
                Value::Object(p) => format!(
                    "{} {}",
                    text(&p["phase"]),
                    bytes(p["bytes_done"].as_u64().unwrap_or(0))
                ),
                _ if image["state"] == "remote" => "-".into(),
                _ => bytes(image["size_bytes"].as_u64().unwrap_or(0)),
            };
            let mut row = vec![
                text(&image["checksum"]),
                text(&image["state"]),
                progress,
                image["vms"].as_array().map_or(0, Vec::len).to_string(),
                or_dash(text(&image["last_used"])),
            ];
            if fleet {
                row.push(or_dash(names(&image["hosts"])));
            }
            row
        })
        .collect();
    let mut header = vec!["CHECKSUM", "STATE", "SIZE", "VMS", "LAST USED"];
    if fleet {
        header.push("HOSTS");
    }
    table(&header, &rows)
}

/// `a,b,c` of a list of strings.
fn names(list: &Value) -> String {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(",")
}

/// A fleet pre-warm: each host asked, what it answered.
pub fn prewarm_table(report: &Value) -> String {
    let rows: Vec<Vec<String>> = report["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|host| {
            let (state, detail) = match &host["error"] {
                Value::Object(error) => (text(&error["code"]), text(&error["message"])),
                _ => {
                    let image = &host["image"];
                    let detail = match &image["progress"] {
                        Value::Object(p) => format!(
                            "{} {}",
                            text(&p["phase"]),
                            bytes(p["bytes_done"].as_u64().unwrap_or(0))
                        ),
                        _ => bytes(image["size_bytes"].as_u64().unwrap_or(0)),
                    };
                    (text(&image["state"]), detail)
                }
            };
            vec![text(&host["host"]), text(&host["status"]), state, detail]
        })
        .collect();
    table(&["HOST", "STATUS", "STATE", "DETAIL"], &rows)
}

/// One row a pool: how many VMs it keeps and how many are ready now, its image, and why it
/// is short when it waits.
pub fn pool_table(pools: &[Value]) -> String {
    let rows: Vec<Vec<String>> = pools
        .iter()
        .map(|pool| {
            let number = |field: &str| pool[field].as_u64().unwrap_or(0).to_string();
            vec![
                text(&pool["name"]),
                number("size"),
                number("ready"),
                number("warming"),
                format!("{}/{}", number("hits"), number("misses")),
                text(&pool["image"]["checksum"]),
                or_dash(text(&pool["waiting"])),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "SIZE",
            "READY",
            "WARMING",
            "HITS/MISSES",
            "IMAGE",
            "WAITING",
        ],
        &rows,
    )
}

/// One row a host of the fleet: its slots, images, idle pool VMs and disk room.
pub fn host_table(hosts: &[Value]) -> String {
    let rows: Vec<Vec<String>> = hosts
        .iter()
        .map(|host| {
            let max = match host["max_vms"].as_u64() {
                Some(0) | None => "-".to_string(),
                Some(n) => n.to_string(),
            };
            let idle: u64 = host["pools"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["ready"].as_u64())
                .sum();
            vec![
                text(&host["name"]),
                if host["draining"] == true {
                    "draining".into()
                } else {
                    "open".into()
                },
                format!("{}/{max}", host["placed"].as_u64().unwrap_or(0)),
                host["images"].as_array().map_or(0, Vec::len).to_string(),
                idle.to_string(),
                host["disk_room"].as_u64().map_or_else(|| "-".into(), bytes),
                text(&host["hypervisor"]),
                text(&host["version"]),
                text(&host["url"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "VMS",
            "IMAGES",
            "IDLE",
            "DISK ROOM",
            "HYPERVISOR",
            "VERSION",
            "URL",
        ],
        &rows,
    )
}

pub fn health_table(health: &Value) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    if let Value::Object(checks) = &health["checks"] {
        for (name, check) in checks {
            let ok = if check["ok"] == true { "ok" } else { "FAILING" };
            rows.push(vec![name.clone(), ok.into(), text(&check["message"])]);
        }
    }
    let mut out = format!("status: {}", text(&health["status"]));
    if health["draining"] == true {
        out.push_str(&format!(
            " (draining since {})",
            text(&health["draining_since"])
        ));
    }
    out.push('\n');
    // Without the token a server answers its status alone: no table of nothing.
    if health["checks"].is_object() {
        out.push_str(&table(&["CHECK", "STATE", "DETAIL"], &rows));
    }
    out
}

pub fn drain_line(state: &Value) -> String {
    if state["draining"] == true {
        format!(
            "draining since {}: new VMs are refused; {} VMs still on the host",
            text(&state["since"]),
            text(&state["vms"])
        )
    } else {
        format!(
            "not draining: new VMs are accepted; {} VMs on the host",
            text(&state["vms"])
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align_and_name_provisioning() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
        let vm =
            json!({"id": "i", "status": "", "ip_address": "", "progress": {"phase": "queued"}});
        let text = vm_table(&vm);
        assert!(text.contains("status        provisioning\n"), "{text}");
        assert!(text.contains("ip_address    -\n"), "{text}");
        assert!(!text.contains("host"), "{text}");
        let placed = json!({"id": "i", "host": "mac-2", "status": "running"});
        assert!(vm_table(&placed).contains("\nhost          mac-2\n"));
        let list = vm_list_table(&[placed]);
        assert!(list.starts_with("ID  HOST   STATUS"), "{list}");
        assert!(!vm_list_table(&[vm]).contains("HOST"));
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }
}
