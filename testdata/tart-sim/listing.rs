//! `tart list` and `tart get`: JSON pretty-printed with `/` escaped, as Swift's encoder does.

use crate::error::TartError;
use crate::home::{self, Home};
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

fn gb(bytes: u64) -> u64 {
    bytes.div_ceil(1_000_000_000)
}

fn entry(home: &Home, source: &str, name: &str, dir: &Path, running: bool) -> Value {
    let disk = fs::metadata(dir.join("disk.img")).ok();
    let accessed = disk.as_ref().map(|m| m.atime()).unwrap_or(0);
    let size: u64 = home::VM_FILES
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).ok())
        .map(|m| m.blocks() * 512)
        .sum();
    let _ = home;
    json!({
        "Source": source,
        "Name": name,
        "Disk": gb(disk.map(|m| m.len()).unwrap_or(0)),
        "Size": gb(size),
        "Accessed": format!("{accessed}"),
        "Running": running,
        "State": if running { "running" } else { "stopped" },
    })
}

fn oci_entries(home: &Home) -> Vec<Value> {
    let root = home.root.join("cache/OCIs");
    let mut found = Vec::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if home::is_vm_dir(&path) {
                let rel = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                // As tart names them: a folder is an image by digest, a symlink a name
                // (tag, or a digest asked for) that points at one.
                let separator = if path.is_symlink() { ':' } else { '@' };
                let name = match rel.rsplit_once('/') {
                    Some((repo, last)) => format!("{repo}{separator}{last}"),
                    None => rel.clone(),
                };
                found.push((name, path));
            } else if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
        .into_iter()
        .map(|(name, path)| entry(home, "OCI", &name, &path, false))
        .collect()
}

fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    // Outside strings JSON has no `/`, so escaping every one escapes exactly the names'.
    println!("{}", text.replace('/', "\\/"));
}

fn format_flag(args: &[String]) -> Result<String, TartError> {
    let mut it = args.iter();
    let mut format = "text".to_string();
    while let Some(arg) = it.next() {
        if arg == "--format" {
            format = it.next().cloned().unwrap_or_default();
        } else if let Some(value) = arg.strip_prefix("--format=") {
            format = value.to_string();
        }
    }
    if !matches!(format.as_str(), "text" | "json") {
        return Err(TartError::usage(&format!(
            "The value '{format}' is invalid for '--format <format>'"
        )));
    }
    Ok(format)
}

/// `tart list [--format text|json] [--source local|oci] [-q]`.
pub fn list(home: &Home, args: &[String]) -> Result<(), TartError> {
    let format = format_flag(args)?;
    let quiet = args.iter().any(|a| a == "-q" || a == "--quiet");
    let source = args
        .iter()
        .position(|a| a == "--source")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.to_lowercase());
    let mut items = Vec::new();
    if source.as_deref() != Some("oci") {
        for name in home.local_names() {
            let running = home.runner(&name).is_some();
            items.push(entry(home, "local", &name, &home.vm_dir(&name), running));
        }
    }
    if source.as_deref() != Some("local") {
        items.extend(oci_entries(home));
    }
    if quiet {
        for item in &items {
            println!("{}", item["Name"].as_str().unwrap_or_default());
        }
    } else if format == "json" {
        print_json(&Value::Array(items));
    } else {
        println!("Source\tName\tDisk\tSize\tAccessed\tState");
        for i in &items {
            println!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                i["Source"].as_str().unwrap_or_default(),
                i["Name"].as_str().unwrap_or_default(),
                i["Disk"],
                i["Size"],
                i["Accessed"].as_str().unwrap_or_default(),
                i["State"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// `tart get NAME [--format text|json]`.
pub fn get(home: &Home, args: &[String]) -> Result<(), TartError> {
    let format = format_flag(args)?;
    let Some(name) = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "--format"))
        .map(|(_, a)| a.clone())
    else {
        return Err(TartError::usage("Missing expected argument '<name>'"));
    };
    home.require(&name)?;
    let config = home::read_config(&home.config_path(&name))?;
    let running = home.runner(&name).is_some();
    let listed = entry(home, "local", &name, &home.vm_dir(&name), running);
    let value = json!({
        "OS": config.get("os").cloned().unwrap_or(json!("darwin")),
        "CPU": home::number(&config, "cpuCount"),
        "Memory": home::number(&config, "memorySize") / (1024 * 1024),
        "Disk": listed["Disk"],
        "DiskFormat": config.get("diskFormat").cloned().unwrap_or(json!("raw")),
        "Size": format!("{}.000", listed["Size"]),
        "Display": "1024x768",
        "Running": running,
        "State": listed["State"],
    });
    if format == "json" {
        print_json(&value);
    } else {
        for (k, v) in value.as_object().into_iter().flatten() {
            println!("{k}\t{v}");
        }
    }
    Ok(())
}
