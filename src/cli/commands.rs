//! Each client command: its options, the request it makes and what it prints.

use std::collections::HashMap;
use std::io::Read;

use serde_json::{json, Map, Value};

use super::args::{self, pairs, Spec};
use super::client::{encode, Client};
use super::{output, wait, Context, Failure};

type Command = fn(&Context) -> Result<(), Failure>;

pub fn dispatch(all: &[String], env: &HashMap<String, String>) -> Result<(), Failure> {
    let (group, rest) = all
        .split_first()
        .map_or(("", &[][..]), |(g, r)| (g.as_str(), r));
    let (name, spec, run): (&str, Spec, Command) = match (group, rest.first().map(String::as_str)) {
        ("vm", Some("create")) => ("vm create", CREATE, vm_create),
        ("vm", Some("get")) => ("vm get", WAIT, vm_get),
        ("vm", Some("list")) => ("vm list", LIST, vm_list),
        ("vm", Some("delete")) => ("vm delete", NONE, vm_delete),
        ("vm", Some("renew")) => ("vm renew", RENEW, vm_renew),
        ("vm", Some("log")) => ("vm log", NONE, vm_log),
        ("image", Some("list")) => ("image list", NONE, image_list),
        ("image", Some("prewarm")) => ("image prewarm", PREWARM, image_prewarm),
        ("image", Some("delete")) => ("image delete", NONE, image_delete),
        ("drain", _) => ("drain", NONE, drain),
        ("undrain", _) => ("undrain", NONE, undrain),
        ("health", _) => ("health", NONE, health),
        ("host", Some("list")) => ("host list", QUIET, host_list),
        ("pool", Some("list")) => ("pool list", NONE, pool_list),
        ("pool", Some("get")) => ("pool get", NONE, pool_get),
        ("pool", Some("put")) => ("pool put", POOL_PUT, pool_put),
        ("pool", Some("delete")) => ("pool delete", NONE, pool_delete),
        ("help", _) => return help(rest),
        ("vm" | "image" | "pool" | "host", Some("--help" | "-h" | "help")) => {
            print!("{}", super::group_usage(group));
            return Ok(());
        }
        // A group alone is a command line cut short: its usage, on stderr, exit 2.
        ("vm" | "image" | "pool" | "host", None) => {
            return Err(Failure::UsageText(super::group_usage(group)))
        }
        (_, None | Some("--help" | "-h" | "help")) => {
            print!("{}", super::help_text());
            return Ok(());
        }
        (group, Some(other)) => {
            return Err(Failure::Usage(format!(
                "unknown command {group} {other:?} (osx-builder help {group} lists its commands)"
            )))
        }
    };
    let words = name.split(' ').count();
    let skip = words.min(all.len());
    let parsed = args::parse(&all[skip..], &spec)?;
    if parsed.flag("help") {
        print!("{}", super::help_text());
        return Ok(());
    }
    let context = Context {
        client: Client::new(super::target(&parsed, env)?),
        json: parsed.flag("json"),
        args: parsed,
    };
    run(&context)
}

const NONE: Spec = Spec {
    values: &[],
    flags: &[],
};
const WAIT: Spec = Spec {
    values: &[],
    flags: &["wait"],
};
const LIST: Spec = Spec {
    values: &["label", "status", "pool"],
    flags: &["quiet"],
};
const QUIET: Spec = Spec {
    values: &[],
    flags: &["quiet"],
};
const RENEW: Spec = Spec {
    values: &["ttl"],
    flags: &[],
};
const PREWARM: Spec = Spec {
    values: &["image-url", "checksum", "checksum-type", "hosts"],
    flags: &["wait"],
};
const CREATE: Spec = Spec {
    values: &[
        "file",
        "image-url",
        "checksum",
        "checksum-type",
        "cpus",
        "memory",
        "network",
        "ttl",
        "label",
        "guestinfo",
        "callback-url",
        "idempotency-key",
    ],
    flags: &["headless", "wait"],
};

const POOL_PUT: Spec = Spec {
    values: &[
        "file",
        "image-url",
        "checksum",
        "checksum-type",
        "cpus",
        "memory",
        "network",
        "size",
    ],
    flags: &["headless"],
};

/// `osx-builder help [COMMAND]`: the whole help, or a group's usage. On stdout: asked for.
fn help(words: &[String]) -> Result<(), Failure> {
    // The options every command takes may follow (`help vm --server URL`): not a topic.
    match words
        .iter()
        .map(String::as_str)
        .find(|w| !w.starts_with('-'))
    {
        None => print!("{}", super::help_text()),
        Some(group @ ("vm" | "image" | "pool" | "host")) => print!("{}", super::group_usage(group)),
        Some("drain" | "undrain" | "health" | "help") => print!("{}", super::help_text()),
        Some(other) => {
            return Err(Failure::Usage(format!(
                "no command {other:?}; the commands are {}",
                super::COMMANDS.join(", ")
            )))
        }
    }
    Ok(())
}

/// The one positional a command like `vm get ID` takes.
fn one(context: &Context, what: &str) -> Result<String, Failure> {
    match context.args.positionals.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(Failure::Usage(format!("give the {what}"))),
        more => Err(Failure::Usage(format!(
            "one {what} only, got {}",
            more.join(" ")
        ))),
    }
}

fn none(context: &Context) -> Result<(), Failure> {
    match context.args.positionals.first() {
        Some(extra) => Err(Failure::Usage(format!("unexpected argument {extra:?}"))),
        None => Ok(()),
    }
}

/// An id goes into the path only if it cannot change the path.
fn path_segment(text: &str, what: &str) -> Result<String, Failure> {
    if text.is_empty()
        || !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
    {
        return Err(Failure::Usage(format!("{text:?} is not a {what}")));
    }
    Ok(text.to_string())
}

fn print_vm(context: &Context, vm: &Value) {
    if context.json {
        println!("{vm}");
    } else {
        print!("{}", output::vm_table(vm));
    }
}

fn vm_create(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let body = create_body(context)?;
    let mut headers = Vec::new();
    if let Some(key) = context.args.value("idempotency-key") {
        headers.push(("Idempotency-Key", key));
    }
    let vm = context
        .client
        .send("POST", "/vms", Some(&body), &headers)?
        .json()?;
    if context.args.flag("wait") {
        let id = vm["id"].as_str().unwrap_or_default();
        let id = path_segment(id, "VM id the server gave")?;
        return finish_vm(context, wait::follow(&context.client, &id, vm)?);
    }
    print_vm(context, &vm);
    Ok(())
}

/// The body from `-f FILE` (`-` for stdin), or from the options; options given with a file
/// override its fields.
fn create_body(context: &Context) -> Result<Value, Failure> {
    let a = &context.args;
    let mut body = shape_body(context, "create.json", &["ttl"])?;
    if let Some(url) = a.value("callback-url") {
        body.insert("callback_url".into(), json!(url));
    }
    for (option, field) in [("label", "labels"), ("guestinfo", "guestinfo")] {
        let given = pairs(a, option)?;
        if given.is_empty() {
            continue;
        }
        let map = body
            .entry(field)
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(map) = map else {
            return Err(Failure::Usage(format!(
                "{field} in the file is not an object"
            )));
        };
        for (k, v) in given {
            map.insert(k, json!(v));
        }
    }
    Ok(Value::Object(body))
}

/// What a create and a pool spec share: the object of `-f FILE` (`-` for stdin) with the
/// image, `--cpus`, `--memory`, `--network`, `--headless` and the `numbers` options laid
/// over it (an option given with a file overrides its field).
fn shape_body(
    context: &Context,
    example: &str,
    numbers: &[&str],
) -> Result<Map<String, Value>, Failure> {
    let a = &context.args;
    let mut body = match a.value("file") {
        Some(path) => {
            let text = if path == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .read_to_string(&mut text)
                    .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
                text
            } else {
                std::fs::read_to_string(path)
                    .map_err(|e| Failure::Usage(format!("cannot read {path}: {e}")))?
            };
            match serde_json::from_str(&text) {
                Ok(Value::Object(map)) => map,
                Ok(_) => return Err(Failure::Usage(format!("{path} is not a JSON object"))),
                Err(e) => return Err(Failure::Usage(format!("{path} is not JSON: {e}"))),
            }
        }
        None => Map::new(),
    };
    if let Some(image) = image_spec(context)? {
        body.insert("image".into(), image);
    }
    if !body.contains_key("image") {
        return Err(Failure::Usage(format!(
            "give the image: -f {example}, or --image-url and --checksum"
        )));
    }
    for option in ["cpus", "memory"].iter().chain(numbers) {
        if let Some(n) = a.number(option)? {
            body.insert(option.to_string(), json!(n));
        }
    }
    if let Some(network) = a.value("network") {
        body.insert("network_type".into(), json!(network));
    }
    if a.flag("headless") {
        body.insert("headless".into(), json!(true));
    }
    Ok(body)
}

/// `image` from `--image-url`, `--checksum` and `--checksum-type` (guessed from the
/// checksum's length when absent: each type has its own).
fn image_spec(context: &Context) -> Result<Option<Value>, Failure> {
    let a = &context.args;
    let (url, checksum) = match (a.value("image-url"), a.value("checksum")) {
        (None, None) => return Ok(None),
        (Some(url), Some(checksum)) => (url, checksum.trim()),
        _ => {
            return Err(Failure::Usage(
                "--image-url and --checksum go together".into(),
            ))
        }
    };
    let kind = match a.value("checksum-type") {
        Some(kind) => kind.to_string(),
        None => match checksum.len() {
            32 => "md5",
            40 => "sha1",
            64 => "sha256",
            128 => "sha512",
            n => {
                return Err(Failure::Usage(format!(
                    "a checksum of {n} characters is no md5, sha1, sha256 or sha512; give --checksum-type"
                )))
            }
        }
        .to_string(),
    };
    Ok(Some(
        json!({"url": url, "checksum": checksum, "checksum_type": kind}),
    ))
}

fn vm_get(context: &Context) -> Result<(), Failure> {
    let id = path_segment(&one(context, "VM id")?, "VM id")?;
    let vm = context.client.get_json(&format!("/vms/{id}"))?;
    if context.args.flag("wait") {
        return finish_vm(context, wait::follow(&context.client, &id, vm)?);
    }
    print_vm(context, &vm);
    Ok(())
}

/// Prints the VM a wait ended with; exit 0 only when it runs with an IP.
fn finish_vm(context: &Context, vm: Value) -> Result<(), Failure> {
    print_vm(context, &vm);
    if wait::is_ready(&vm) {
        return Ok(());
    }
    let (code, message) = match &vm["error"] {
        Value::Object(error) => (
            error["code"].as_str().unwrap_or("failed").to_string(),
            error["message"].as_str().unwrap_or("").to_string(),
        ),
        _ => (
            vm["progress"]["phase"]
                .as_str()
                .unwrap_or("not-ready")
                .to_string(),
            format!(
                "the VM is {} without an IP address",
                output::status_word(&vm)
            ),
        ),
    };
    Err(Failure::Failed { code, message })
}

fn vm_list(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let labels = pairs(&context.args, "label")?;
    let statuses = context.args.all("status");
    let pool = context.args.value("pool");
    let mut query: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("label={}={}", encode(k), encode(v)))
        .collect();
    for status in statuses {
        query.push(format!("status={}", encode(status)));
    }
    if let Some(pool) = pool {
        query.push(format!("pool={}", encode(pool)));
    }
    let path = match query.is_empty() {
        true => "/vms".to_string(),
        false => format!("/vms?{}", query.join("&")),
    };
    let list = context.client.get_json(&path)?;
    // Filtered here too: a server without the filters answers every VM.
    let vms: Vec<Value> = list
        .as_array()
        .ok_or_else(|| Failure::Protocol("GET /vms did not answer a list".into()))?
        .iter()
        .filter(|vm| {
            statuses.is_empty()
                || statuses
                    .iter()
                    .any(|s| output::status_word(vm) == s || vm["status"] == s.as_str())
        })
        .filter(|vm| labels.iter().all(|(k, v)| vm["labels"][k] == v.as_str()))
        // An older server does not filter by pool: an idle VM names its pool, a handed-out
        // one not.
        .filter(|vm| pool.is_none_or(|p| vm["pool"] == p))
        .cloned()
        .collect();
    if context.args.flag("quiet") {
        for vm in &vms {
            println!("{}", vm["id"].as_str().unwrap_or_default());
        }
    } else if context.json {
        println!("{}", Value::Array(vms));
    } else {
        print!("{}", output::vm_list_table(&vms));
    }
    Ok(())
}

fn vm_delete(context: &Context) -> Result<(), Failure> {
    delete(context, "VM id", "id", "/vms")
}

/// `DELETE {collection}/{the positional}`; prints what is gone.
fn delete(context: &Context, what: &str, key: &str, collection: &str) -> Result<(), Failure> {
    let name = path_segment(&one(context, what)?, what)?;
    context
        .client
        .send("DELETE", &format!("{collection}/{name}"), None, &[])?;
    if context.json {
        println!("{}", json!({key: name, "deleted": true}));
    } else {
        println!("deleted {name}");
    }
    Ok(())
}

fn vm_renew(context: &Context) -> Result<(), Failure> {
    let id = path_segment(&one(context, "VM id")?, "VM id")?;
    let body = context.args.number("ttl")?.map(|ttl| json!({"ttl": ttl}));
    let vm = context
        .client
        .send("POST", &format!("/vms/{id}/renew"), body.as_ref(), &[])?
        .json()?;
    print_vm(context, &vm);
    Ok(())
}

fn vm_log(context: &Context) -> Result<(), Failure> {
    let id = path_segment(&one(context, "VM id")?, "VM id")?;
    let reply = context
        .client
        .send("GET", &format!("/vms/{id}/log"), None, &[])?;
    use std::io::Write;
    let _ = std::io::stdout().write_all(&reply.body);
    Ok(())
}

fn image_list(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let list = context.client.get_json("/images")?;
    if context.json {
        println!("{list}");
    } else {
        let empty = Vec::new();
        print!(
            "{}",
            output::image_list_table(list.as_array().unwrap_or(&empty))
        );
    }
    Ok(())
}

fn image_prewarm(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let image = image_spec(context)?
        .ok_or_else(|| Failure::Usage("give the image: --image-url and --checksum".into()))?;
    if let Some(hosts) = context.args.value("hosts") {
        return fleet_prewarm(context, image, hosts);
    }
    let entry = context
        .client
        .send("POST", "/images", Some(&image), &[])?
        .json()?;
    let entry = if context.args.flag("wait") {
        let checksum = path_segment(image["checksum"].as_str().unwrap_or_default(), "checksum")?;
        wait::follow_image(&context.client, &checksum.to_ascii_lowercase(), entry)?
    } else {
        entry
    };
    print_image(context, &entry)
}

fn print_image(context: &Context, entry: &Value) -> Result<(), Failure> {
    if context.json {
        println!("{entry}");
    } else {
        print!("{}", output::image_list_table(std::slice::from_ref(entry)));
    }
    if entry["state"] == "failed" {
        return Err(Failure::Failed {
            code: entry["error"]["code"].as_str().unwrap_or("failed").into(),
            message: entry["error"]["message"].as_str().unwrap_or("").into(),
        });
    }
    Ok(())
}

/// `image prewarm --hosts N|all`: the fleet's front door asks each host it picks; a line
/// per host. Exit 1 when a host refused (every host refusing is the server's 502).
fn fleet_prewarm(context: &Context, mut image: Value, hosts: &str) -> Result<(), Failure> {
    if context.args.flag("wait") {
        return Err(Failure::Usage(
            "--wait follows a download on one server; with --hosts, osx-builder image list shows which hosts hold the image".into(),
        ));
    }
    image["hosts"] = if hosts.eq_ignore_ascii_case("all") {
        json!("all")
    } else {
        match hosts.parse::<u32>() {
            Ok(n) if n >= 1 => json!(n),
            _ => {
                return Err(Failure::Usage(format!(
                    "--hosts takes all or a number of hosts from 1, got {hosts:?}"
                )))
            }
        }
    };
    let report = match context.client.send("POST", "/images", Some(&image), &[]) {
        Ok(reply) => reply.json()?,
        Err(Failure::Api {
            status: 502, body, ..
        }) if body["hosts"].is_array() => body,
        Err(other) => return Err(other),
    };
    // A server without --etcd pre-warms by itself and answers its own entry.
    if !report["hosts"].is_array() {
        eprintln!("osx-builder: this server is not part of a fleet: pre-warmed on it alone");
        return print_image(context, &report);
    }
    if context.json {
        println!("{report}");
    } else {
        print!("{}", output::prewarm_table(&report));
    }
    let refused: Vec<&Value> = report["hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|h| h["error"].is_object())
        .collect();
    match refused.as_slice() {
        [] => Ok(()),
        [first, ..] => Err(Failure::Failed {
            code: first["error"]["code"].as_str().unwrap_or("failed").into(),
            message: format!(
                "{} of {} hosts refused the pre-warm; {}: {}",
                refused.len(),
                report["hosts"].as_array().map_or(0, Vec::len),
                first["host"].as_str().unwrap_or(""),
                first["error"]["message"].as_str().unwrap_or("")
            ),
        }),
    }
}

fn image_delete(context: &Context) -> Result<(), Failure> {
    delete(context, "checksum", "checksum", "/images")
}

fn pool_list(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let list = context.client.get_json("/pools")?;
    if context.json {
        println!("{list}");
    } else {
        let empty = Vec::new();
        print!("{}", output::pool_table(list.as_array().unwrap_or(&empty)));
    }
    Ok(())
}

fn pool_get(context: &Context) -> Result<(), Failure> {
    let name = path_segment(&one(context, "pool name")?, "pool name")?;
    let pool = context.client.get_json(&format!("/pools/{name}"))?;
    print_pool(context, &pool);
    Ok(())
}

/// `PUT /pools/NAME`: declares the pool, or changes it (a new image rolls its idle VMs).
fn pool_put(context: &Context) -> Result<(), Failure> {
    let name = path_segment(&one(context, "pool name")?, "pool name")?;
    let body = Value::Object(shape_body(context, "pool.json", &["size"])?);
    let pool = context
        .client
        .send("PUT", &format!("/pools/{name}"), Some(&body), &[])?
        .json()?;
    print_pool(context, &pool);
    Ok(())
}

fn pool_delete(context: &Context) -> Result<(), Failure> {
    delete(context, "pool name", "name", "/pools")
}

fn print_pool(context: &Context, pool: &Value) {
    if context.json {
        println!("{pool}");
    } else {
        print!("{}", output::pool_table(std::slice::from_ref(pool)));
    }
}

/// `GET /hosts`: the fleet as the server sees it. A lone server has no hosts to list: said
/// plainly, exit 1.
fn host_list(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let answer = match context.client.get_json("/hosts") {
        Ok(answer) => answer,
        Err(Failure::Api { code, .. }) if code == "fleet-off" => {
            return Err(Failure::Failed {
                code,
                message: "this server is not part of a fleet (it runs without --etcd); it is the only host, see osx-builder health".into(),
            })
        }
        Err(other) => return Err(other),
    };
    let empty = Vec::new();
    let hosts = answer["hosts"].as_array().unwrap_or(&empty);
    if context.args.flag("quiet") {
        for host in hosts {
            println!("{}", host["name"].as_str().unwrap_or_default());
        }
    } else if context.json {
        println!("{answer}");
    } else {
        print!("{}", output::host_table(hosts));
    }
    // Not joined: what it shows may be old, and a person should know.
    let fleet = &answer["fleet"];
    if fleet["state"] != "joined" {
        eprintln!(
            "osx-builder: {} is {} with its fleet{}: {}",
            answer["host"].as_str().unwrap_or("the server"),
            fleet["state"].as_str().unwrap_or("not joined"),
            fleet["since"]
                .as_str()
                .map(|since| format!(" since {since}"))
                .unwrap_or_default(),
            fleet["message"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn drain(context: &Context) -> Result<(), Failure> {
    drain_call(context, "/drain")
}

fn undrain(context: &Context) -> Result<(), Failure> {
    drain_call(context, "/undrain")
}

fn drain_call(context: &Context, path: &str) -> Result<(), Failure> {
    none(context)?;
    let state = context.client.send("POST", path, None, &[])?.json()?;
    if context.json {
        println!("{state}");
    } else {
        println!("{}", output::drain_line(&state));
    }
    Ok(())
}

/// 503 is the answer of a failing check, not a refusal: shown as the checks, exit 1.
fn health(context: &Context) -> Result<(), Failure> {
    none(context)?;
    let health = match context.client.send("GET", "/healthz", None, &[]) {
        Ok(reply) => reply.json()?,
        // 503 is a failing check: with the checks, or (without the token) the status alone.
        Err(Failure::Api {
            status: 503, body, ..
        }) if body.get("checks").is_some() || body.get("status").is_some() => body,
        Err(other) => return Err(other),
    };
    if context.json {
        println!("{health}");
    } else {
        print!("{}", output::health_table(&health));
    }
    // A server with a token answers a request without it with the status alone.
    if health.get("checks").is_none() {
        eprintln!(
            "osx-builder: the server keeps its checks for requests with its token; give \
             --token-file / OSX_BUILDER_TOKEN_FILE (or --token) to see them"
        );
    }
    if health["status"] == "ok" {
        return Ok(());
    }
    Err(Failure::Failed {
        code: health["code"].as_str().unwrap_or("unhealthy").into(),
        message: health["message"]
            .as_str()
            .unwrap_or("the server says it is failing")
            .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_cannot_leave_their_path() {
        assert!(path_segment("282ee68a-2e4d-4bd7-9c0e-7f37e12fc489", "id").is_ok());
        for bad in ["", "../x", "a/b", "a?wait=1", "a b", "%2e"] {
            assert!(path_segment(bad, "id").is_err(), "{bad}");
        }
    }
}
