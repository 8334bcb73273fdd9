//! This host as a member of the fleet: its record on its own lease (renewed every TTL/3 on
//! a thread of its own), rewritten when what it says changes; its VMs in the fleet's
//! directory and its slots kept true; the view of the others kept by watches; and what
//! happens when a host is lost, when this one is cut off, and when etcd is down.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use super::etcd::{watch_prefix, Client, EtcdError, Kv, WatchEnd};
use super::forward::Peers;
use super::metrics::FleetMetrics;
use super::record::{DirEntry, HostRecord, Keys, PoolIdle, Slots};
use super::settings::FleetConfig;
use super::view::View;
use crate::service::Service;
use crate::sys::sync::LockUnpoisoned;
use crate::tls::ClientTrust;
use crate::vm::{Status, Vm, VmId};

/// Where this host stands with the fleet, for `/healthz`, `GET /hosts` and creates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// `joined`, `degraded` (etcd does not answer: serving alone) or `partitioned` (its
    /// lease was lost: rejoining).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Standing {
    fn joined() -> Self {
        Self {
            state: "joined",
            since: None,
            message: None,
        }
    }
}

pub struct Node {
    pub name: String,
    pub url: String,
    pub keys: Keys,
    pub client: Arc<Client>,
    pub ttl: u64,
    lease: AtomicI64,
    standing: Mutex<Standing>,
    pub view: View,
    pub service: Arc<Service>,
    pub peers: Peers,
    /// The record last written, as bytes.
    published: Mutex<Option<Vec<u8>>>,
    /// Each local VM's fingerprint as last written to the directory.
    directory: Mutex<HashMap<String, u64>>,
    /// Ids of VMs created here on a front door's claim: once such a VM is gone its claim
    /// goes too, even when it came and went between two passes of the sync loop (a claim
    /// of a VM never seen here would otherwise hold its slot for [`CLAIM_GRACE_MS`]).
    arrived: Mutex<HashSet<String>>,
    /// Registered once already: a later registration is a way back into the fleet (after
    /// a partition, or etcd down at start with `--fleet-optional`), and is logged so.
    registered_once: AtomicBool,
    pub metrics: FleetMetrics,
}

/// How long a slot claimed by a front door may wait for its VM before the owner frees it.
const CLAIM_GRACE_MS: i64 = 60_000;
/// Between two passes of the loop that writes this host's record and directory entries.
const SYNC_INTERVAL: Duration = Duration::from_millis(200);

impl Node {
    /// Connects, registers this host and starts its threads. An etcd that does not answer
    /// stops the server unless the fleet is optional; a live host with this name does too.
    pub fn join(
        config: &FleetConfig,
        service: Arc<Service>,
        url: String,
        trust: &ClientTrust,
    ) -> Result<Arc<Self>, String> {
        let trust = match (&config.cert, &config.key, &config.ca_file) {
            (Some(cert), Some(key), _) => {
                let base = match &config.ca_file {
                    Some(ca) => ClientTrust::from_ca_file_only(ca)?,
                    None => trust.clone(),
                };
                base.with_client_identity(cert, key)
                    .map_err(|e| format!("--etcd-cert / --etcd-key: {e}"))?
            }
            (_, _, Some(ca)) => {
                ClientTrust::from_ca_file_only(ca).map_err(|e| format!("--etcd-ca-file: {e}"))?
            }
            _ => trust.clone(),
        };
        let client = Arc::new(Client::new(config.endpoints.clone(), Some(&trust)));
        let node = Arc::new(Self {
            name: config.host_name.clone(),
            url,
            keys: Keys {
                prefix: config.prefix.clone(),
            },
            client,
            ttl: config.ttl,
            lease: AtomicI64::new(0),
            standing: Mutex::new(Standing::joined()),
            view: View::default(),
            service,
            peers: Peers::new(Some(&trust)),
            published: Mutex::new(None),
            directory: Mutex::new(HashMap::new()),
            arrived: Mutex::new(HashSet::new()),
            registered_once: AtomicBool::new(false),
            metrics: FleetMetrics::default(),
        });
        match node.client.health().and_then(|()| node.register()) {
            // A restart after a crash: what the fleet decided meanwhile applies here too.
            Ok(Registered::Yes) => node.reconcile(),
            Ok(Registered::NameTaken(other)) => {
                return Err(format!(
                    "a live host named {} ({}) is already in the fleet at {}: give this host another --host-name",
                    node.name,
                    other,
                    config.endpoints.join(",")
                ))
            }
            Err(err) if config.optional => {
                crate::warn!("fleet: {err}; serving alone (--fleet-optional) until etcd answers");
                node.set_standing("degraded", Some(err.to_string()));
            }
            Err(err) => {
                return Err(format!(
                    "cannot join the fleet at {}: {err}; start etcd, fix --etcd, or set --fleet-optional to start without it",
                    config.endpoints.join(",")
                ))
            }
        }
        node.start_threads();
        Ok(node)
    }

    pub fn standing(&self) -> Standing {
        self.standing.lock_unpoisoned().clone()
    }

    /// Joined: placing, forwarding and taking forwarded creates.
    pub fn is_joined(&self) -> bool {
        self.standing.lock_unpoisoned().state == "joined"
    }

    fn set_standing(&self, state: &'static str, message: Option<String>) {
        let mut standing = self.standing.lock_unpoisoned();
        if standing.state == state {
            return;
        }
        let was = standing.state;
        *standing = Standing {
            state,
            since: (state != "joined").then(crate::sys::time::rfc3339_now),
            message: message.clone(),
        };
        drop(standing);
        match state {
            "joined" => crate::info!("fleet: joined as {} (was {was})", self.name),
            _ => crate::warn!(
                "fleet: {state}: {}",
                message.unwrap_or_else(|| "no detail".into())
            ),
        }
    }

    fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// This host as the others see it.
    pub fn describe(&self) -> HostRecord {
        let service = &self.service;
        HostRecord {
            name: self.name.clone(),
            url: self.url.clone(),
            hypervisor: service.hypervisor_kind().to_string(),
            max_vms: service.max_vms(),
            vms: service.vm_records().len() as u64,
            images: service.ready_images(),
            pools: service
                .pool_facts()
                .into_iter()
                .map(|p| PoolIdle {
                    name: p.name,
                    spec: p.spec,
                    ready: p.ready,
                })
                .collect(),
            draining: service.is_draining(),
            disk_room: service.disk_room(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            lease: self.lease().to_string(),
        }
    }

    /// A new lease and the record on it, created only if no live host has the name. A
    /// record of this very URL is this host before a restart: its lease is waited out.
    fn register(&self) -> Result<Registered, EtcdError> {
        let (lease, _) = self.client.grant(self.ttl)?;
        self.lease.store(lease, Ordering::SeqCst);
        let key = self.keys.host(&self.name);
        let deadline = Instant::now() + Duration::from_secs(self.ttl + 5);
        loop {
            let record = serde_json::to_vec(&self.describe()).unwrap_or_default();
            let Some(existing) = self
                .client
                .create_if_absent(key.as_bytes(), &record, lease)?
            else {
                *self.published.lock_unpoisoned() = Some(record);
                if let Err(err) = self.fill_view() {
                    // Not joined without the fleet in view: the next try registers afresh.
                    let _ = self.client.revoke(lease);
                    self.lease.store(0, Ordering::SeqCst);
                    return Err(err);
                }
                crate::info!(
                    "fleet: {} registered at {} (lease {lease}, ttl {} s)",
                    self.name,
                    self.url,
                    self.ttl
                );
                return Ok(Registered::Yes);
            };
            let theirs: Option<HostRecord> = serde_json::from_slice(&existing.value).ok();
            let same_url = theirs.as_ref().is_some_and(|r| r.url == self.url);
            if !same_url || Instant::now() > deadline {
                let _ = self.client.revoke(lease);
                self.lease.store(0, Ordering::SeqCst);
                return Ok(Registered::NameTaken(
                    theirs.map_or_else(|| "unreadable record".into(), |r| r.url),
                ));
            }
            crate::info!(
                "fleet: the record of {} from before a restart is still live; waiting for its lease to end",
                self.name
            );
            thread::sleep(Duration::from_millis(500));
        }
    }

    fn start_threads(self: &Arc<Self>) {
        let spawn = |name: &str, node: Arc<Self>, body: fn(&Self)| {
            let spawned = thread::Builder::new()
                .name(name.into())
                .spawn(move || body(&node));
            if let Err(err) = spawned {
                crate::error!("fleet: cannot start the {name} thread: {err}");
            }
        };
        spawn("fleet-lease", self.clone(), Self::keep_lease);
        spawn("fleet-sync", self.clone(), Self::keep_synced);
        spawn("fleet-hosts", self.clone(), |node| node.follow("hosts"));
        spawn("fleet-slots", self.clone(), |node| node.follow("slots"));
    }

    /// Renews the lease every TTL/3. A lease etcd no longer knows means the fleet has
    /// counted this host dead: it stops taking fleet creates, registers again and makes
    /// its VMs agree with what the fleet decided meanwhile.
    fn keep_lease(&self) {
        let period = Duration::from_millis((self.ttl * 1000 / 3).max(300));
        loop {
            thread::sleep(period);
            let lease = self.lease();
            if lease == 0 {
                self.rejoin();
                continue;
            }
            match self.client.keepalive(lease) {
                Ok(Some(_)) => {
                    self.metrics.renewal("ok");
                    if self.standing().state == "degraded" {
                        // Back before the lease ran out: nothing was decided without us,
                        // but writes may have been missed, and events of the others.
                        if self.fill_view().is_err() {
                            continue;
                        }
                        self.published.lock_unpoisoned().take();
                        self.directory.lock_unpoisoned().clear();
                        self.set_standing("joined", None);
                    }
                }
                Ok(None) => {
                    self.metrics.renewal("expired");
                    self.lease.store(0, Ordering::SeqCst);
                    self.set_standing(
                        "partitioned",
                        Some(format!(
                            "the lease of {} ended while it was cut off from etcd; fleet creates are refused until it has rejoined",
                            self.name
                        )),
                    );
                    self.rejoin();
                }
                Err(err) => {
                    self.metrics.renewal("failed");
                    self.set_standing(
                        "degraded",
                        Some(format!(
                            "{err}; serving this host's VMs and taking creates for this host only"
                        )),
                    );
                }
            }
        }
    }

    fn rejoin(&self) {
        match self.register() {
            Ok(Registered::Yes) => {
                // Cleared first: reconcile marks the entries of the VMs it destroys as not
                // to be rewritten, so they stay as the fleet left them.
                self.directory.lock_unpoisoned().clear();
                self.reconcile();
                self.set_standing("joined", None);
            }
            Ok(Registered::NameTaken(url)) => self.set_standing(
                "partitioned",
                Some(format!(
                    "another live host took the name {} ({url})",
                    self.name
                )),
            ),
            Err(err) => {
                self.lease.store(0, Ordering::SeqCst);
                let state = self.standing().state;
                let state = if state == "partitioned" {
                    "partitioned"
                } else {
                    "degraded"
                };
                self.set_standing(state, Some(format!("{err}; rejoining when etcd answers")));
            }
        }
    }

    /// After each registration: a VM of this host the fleet declared lost is destroyed
    /// (its clients were told it failed); one still recorded here is claimed again. On the
    /// first one these are the VMs from before a restart (a crash may have left some lost)
    /// or made while etcd did not answer.
    fn reconcile(&self) {
        let back = self.registered_once.swap(true, Ordering::SeqCst);
        let vms = self.service.vm_records();
        let held = vms.len();
        let mut lost = 0;
        for vm in vms {
            let id = vm.id.to_string();
            let entry = self
                .client
                .get(self.keys.vm(&id).as_bytes())
                .ok()
                .flatten()
                .and_then(|kv| serde_json::from_slice::<DirEntry>(&kv.value).ok());
            let declared_lost = entry.as_ref().is_some_and(|e| {
                e.host != self.name
                    || e.deleted
                    || e.vm["error"]["code"].as_str() == Some(HOST_LOST)
            });
            if declared_lost {
                lost += 1;
                crate::warn!(
                    "vm={id} the fleet declared it lost while this host was cut off: destroying it"
                );
                let service = self.service.clone();
                thread::spawn(move || {
                    if let Err(err) = service.delete(vm.id) {
                        crate::warn!("vm={} destroying a VM the fleet lost failed: {err}", vm.id);
                    }
                });
                // Its directory entry stays as the fleet left it.
                self.directory.lock_unpoisoned().insert(id, u64::MAX);
            }
        }
        if back {
            crate::info!(
                "fleet: {} rejoined; {lost} VM(s) the fleet had declared lost are being destroyed, the others are claimed again",
                self.name
            );
        } else if held > 0 {
            crate::info!(
                "fleet: {} joined with {held} VM(s) of its own; {lost} of them the fleet had declared lost are being destroyed, the others are claimed for it",
                self.name
            );
        }
    }

    /// Writes this host's record when it changed, its VMs' directory entries when theirs
    /// did, and its slots when its set of VMs did.
    fn keep_synced(&self) {
        let mut last_ids: Option<HashSet<String>> = None;
        let mut last_slots = Instant::now();
        loop {
            thread::sleep(SYNC_INTERVAL);
            let lease = self.lease();
            if lease == 0 || self.standing().state == "degraded" && !self.etcd_answers() {
                continue;
            }
            let record = serde_json::to_vec(&self.describe()).unwrap_or_default();
            let changed = self.published.lock_unpoisoned().as_ref() != Some(&record);
            if changed {
                let key = self.keys.host(&self.name);
                match self.client.put(key.as_bytes(), &record, lease) {
                    Ok(()) => *self.published.lock_unpoisoned() = Some(record),
                    // The keepalive notices an etcd that does not answer and says so.
                    Err(_) => continue,
                }
            }
            let vms = self.service.vm_records();
            let ids: HashSet<String> = vms.iter().map(|vm| vm.id.to_string()).collect();
            if self.write_directory(&vms).is_err() {
                continue;
            }
            let left = self
                .arrived
                .lock_unpoisoned()
                .iter()
                .any(|id| !ids.contains(id));
            let due = left
                || last_ids.as_ref() != Some(&ids)
                || last_slots.elapsed() > Duration::from_secs(5);
            if due && self.write_slots(&ids).is_ok() {
                last_ids = Some(ids);
                last_slots = Instant::now();
            }
        }
    }

    fn etcd_answers(&self) -> bool {
        self.client.health().is_ok()
    }

    fn write_directory(&self, vms: &[Vm]) -> Result<(), EtcdError> {
        let mut written = self.directory.lock_unpoisoned().clone();
        let mut seen = HashSet::new();
        for vm in vms {
            let id = vm.id.to_string();
            seen.insert(id.clone());
            let print = fingerprint(vm);
            if written.get(&id) == Some(&print) || written.get(&id) == Some(&u64::MAX) {
                continue;
            }
            let Ok(json) = self.service.get(vm.id) else {
                continue;
            };
            let object = serde_json::from_slice::<Value>(&with_host(&json, &self.name))
                .unwrap_or(Value::Null);
            let entry = DirEntry {
                host: self.name.clone(),
                vm: object,
                deleted: false,
            };
            let bytes = serde_json::to_vec(&entry).unwrap_or_default();
            self.client.put(self.keys.vm(&id).as_bytes(), &bytes, 0)?;
            written.insert(id, print);
        }
        let gone: Vec<String> = written
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            let key = self.keys.vm(&id);
            // Only our own entry: one the fleet rewrote after a loss stays as it is.
            if let Some(kv) = self.client.get(key.as_bytes())? {
                // A tombstone goes with the VM its client deleted.
                let ours = serde_json::from_slice::<DirEntry>(&kv.value).is_ok_and(|e| {
                    e.host == self.name && (e.deleted || e.vm["error"]["code"] != HOST_LOST)
                });
                if ours {
                    self.client.delete_if(key.as_bytes(), kv.mod_revision)?;
                }
            }
            written.remove(&id);
        }
        *self.directory.lock_unpoisoned() = written;
        Ok(())
    }

    /// `slots/<self>`: this host's VMs, plus claims of front doors whose VM has not arrived
    /// yet (for a while).
    fn write_slots(&self, ids: &HashSet<String>) -> Result<(), EtcdError> {
        let now = crate::sys::time::now_ms();
        let left: HashSet<String> = self
            .arrived
            .lock_unpoisoned()
            .iter()
            .filter(|id| !ids.contains(*id))
            .cloned()
            .collect();
        self.change_slots(&self.name, |slots| {
            let before = slots.clone();
            // A claim (its time) waits for its VM a while; a VM that was here (0), or
            // arrived and left, frees its slot at once.
            slots.vms.retain(|id, at| {
                ids.contains(id) || (*at > 0 && now - *at < CLAIM_GRACE_MS && !left.contains(id))
            });
            for id in ids {
                slots.vms.insert(id.clone(), 0);
            }
            *slots != before
        })?;
        self.arrived
            .lock_unpoisoned()
            .retain(|id| !left.contains(id));
        Ok(())
    }

    /// A VM created here on a front door's claim (see `arrived`).
    pub fn arrived(&self, id: VmId) {
        self.arrived.lock_unpoisoned().insert(id.to_string());
    }

    /// Compare-and-swap of a host's slots: `change` edits them (true: write) until a write
    /// wins or `change` says there is nothing to do. Returns whether it wrote.
    ///
    /// The first try starts from the view, which can lag etcd by a watch event: a front
    /// door that releases the slot it claimed a moment ago may not see its own claim there
    /// yet. So "nothing to do" is only believed of etcd's own copy.
    pub fn change_slots(
        &self,
        host: &str,
        mut change: impl FnMut(&mut Slots) -> bool,
    ) -> Result<bool, EtcdError> {
        let key = self.keys.slots(host);
        let known = self.view.slots(host);
        let (mut slots, mut revision) = match known {
            Some(k) => (k.value, k.mod_revision),
            None => (Slots::default(), 0),
        };
        let mut from_view = true;
        let read = |kv: Option<Kv>| match kv {
            Some(kv) if kv.mod_revision != 0 => (
                serde_json::from_slice(&kv.value).unwrap_or_default(),
                kv.mod_revision,
            ),
            _ => (Slots::default(), 0),
        };
        for _ in 0..20 {
            if !change(&mut slots) {
                if !from_view {
                    return Ok(false);
                }
                from_view = false;
                (slots, revision) = read(self.client.get(key.as_bytes())?);
                continue;
            }
            let bytes = serde_json::to_vec(&slots).unwrap_or_default();
            match self.client.put_if(key.as_bytes(), revision, &bytes, 0)? {
                None => return Ok(true),
                Some(current) => {
                    from_view = false;
                    (slots, revision) = read(Some(current));
                }
            }
        }
        Err(EtcdError::Refused {
            code: 10,
            message: format!("the slots of {host} changed 20 times while being claimed"),
        })
    }

    /// Reads every key of `hosts/` or `slots/` into the view: the revision read at.
    fn read_into_view(&self, kind: &str) -> Result<i64, EtcdError> {
        let prefix = format!("{}{kind}/", self.keys.prefix);
        let (kvs, revision) = self.client.range_prefix(prefix.as_bytes())?;
        let changes = self.view.reset(&self.keys, kind, &kvs, revision);
        self.hosts_gone(changes.gone);
        Ok(revision)
    }

    /// The fleet as etcd has it, read before this host says it joined: were it left to the
    /// watches, `GET /hosts` would be empty and creates refused for a moment after a join.
    fn fill_view(&self) -> Result<(), EtcdError> {
        self.read_into_view("hosts")?;
        self.read_into_view("slots")?;
        Ok(())
    }

    /// Keeps the view of `hosts/` or `slots/` in step with etcd, watching from the revision
    /// after the join's read (no event between them is missed).
    fn follow(&self, kind: &str) {
        let prefix = format!("{}{kind}/", self.keys.prefix);
        let mut read_at = self.view.read_at(kind);
        loop {
            if read_at == 0 {
                match self.read_into_view(kind) {
                    Ok(revision) => read_at = revision,
                    Err(_) => {
                        thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let mut next = read_at + 1;
            read_at = 0;
            loop {
                let mut gone = Vec::new();
                let end = watch_prefix(&self.client, prefix.as_bytes(), &mut next, &mut |events| {
                    gone.extend(self.view.apply(&self.keys, &events).gone);
                    // Handled between streams would be late: handled here, on other threads.
                    self.hosts_gone(std::mem::take(&mut gone));
                    true
                });
                match end {
                    WatchEnd::Compacted => break,
                    WatchEnd::Stopped => return,
                    // Its lifetime, or a member that went: the next stream resumes.
                    WatchEnd::Closed(why) => {
                        if why.contains("unreachable") {
                            thread::sleep(Duration::from_millis(500));
                        }
                    }
                }
            }
        }
    }

    fn hosts_gone(&self, gone: Vec<super::view::Known<HostRecord>>) {
        for host in gone {
            if host.value.name == self.name {
                continue;
            }
            self.metrics.host_lost();
            let (client, keys, me) = (self.client.clone(), self.keys.clone(), self.name.clone());
            thread::spawn(move || {
                if let Err(err) = mark_lost(&client, &keys, &me, &host.value, host.lease) {
                    crate::warn!(
                        "fleet: handling the loss of {} failed: {err}",
                        host.value.name
                    );
                }
            });
        }
    }

    /// The fleet's hosts for `GET /hosts`: each record with its slots.
    pub fn hosts(&self) -> Vec<Value> {
        self.view
            .hosts()
            .into_iter()
            .map(|known| {
                let placed = self
                    .view
                    .slots(&known.value.name)
                    .map_or(0, |s| s.value.vms.len());
                let mut value = serde_json::to_value(&known.value).unwrap_or(Value::Null);
                value["placed"] = Value::from(placed as u64);
                value["alive"] = Value::Bool(true);
                value
            })
            .collect()
    }

    /// Prometheus lines of the fleet, appended to `/metrics`.
    pub fn metrics_text(&self) -> String {
        self.metrics.render(&self.client.stats, self.is_joined())
    }
}

enum Registered {
    Yes,
    /// Another live host has the name: its URL.
    NameTaken(String),
}

/// The error code of a VM whose host left the fleet.
pub const HOST_LOST: &str = "host-lost";

/// A host's lease ended: one survivor (the one that creates the marker) marks its VMs
/// failed `host-lost` in the directory and frees its slots.
fn mark_lost(
    client: &Client,
    keys: &Keys,
    me: &str,
    host: &HostRecord,
    lease: i64,
) -> Result<(), EtcdError> {
    let marker = keys.lost(&host.name, &lease.to_string());
    if client
        .create_if_absent(marker.as_bytes(), me.as_bytes(), 0)?
        .is_some()
    {
        return Ok(());
    }
    let (entries, _) = client.range_prefix(keys.vms().as_bytes())?;
    let now = crate::sys::time::rfc3339_now();
    let mut marked = 0;
    for kv in entries {
        let Ok(mut entry) = serde_json::from_slice::<DirEntry>(&kv.value) else {
            continue;
        };
        if entry.host != host.name || entry.deleted || entry.vm["error"]["code"] == HOST_LOST {
            continue;
        }
        if entry.vm.is_object() {
            entry.vm["status"] = Value::from("failed");
            entry.vm["ip_address"] = Value::from("");
            entry.vm["updated_at"] = Value::from(now.clone());
            entry.vm["error"] = serde_json::json!({
                "code": HOST_LOST,
                "message": format!(
                    "the host {} that ran this VM left the fleet (its lease ended: it crashed, lost power or was cut off); the VM is gone, create another",
                    host.name
                ),
            });
        }
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        // Unless its owner rewrote it meanwhile (it is alive after all).
        if client
            .put_if(&kv.key, kv.mod_revision, &bytes, 0)?
            .is_none()
        {
            marked += 1;
        }
    }
    client.delete(keys.slots(&host.name).as_bytes())?;
    crate::warn!(
        "fleet: host {} left the fleet (its lease ended): {marked} VM(s) marked failed host-lost, its slots freed",
        host.name
    );
    Ok(())
}

/// What of a VM the directory follows: a new entry is written when one of these changes,
/// not on every byte of download progress.
fn fingerprint(vm: &Vm) -> u64 {
    let text = format!(
        "{:?}|{}|{:?}|{:?}|{:?}|{:?}",
        vm.status,
        vm.ip_address,
        vm.error.as_ref().map(|e| &e.code),
        vm.progress.phase,
        vm.pool,
        vm.expires_at
    );
    super::placement::fnv(text.as_bytes())
}

/// The VM object with `"host": <name>` first: every host's answers say where a VM runs.
pub fn with_host(json: &[u8], host: &str) -> Vec<u8> {
    let Some(rest) = json.strip_prefix(b"{") else {
        return json.to_vec();
    };
    let mut out = Vec::with_capacity(json.len() + host.len() + 12);
    out.extend_from_slice(b"{\"host\":");
    out.extend_from_slice(&serde_json::to_vec(host).unwrap_or_default());
    if !rest.starts_with(b"}") {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    out
}

/// The directory's answer for a VM whose owner is gone: failed `host-lost`, whatever the
/// entry said last.
pub fn lost_object(entry: &DirEntry) -> Value {
    let mut vm = entry.vm.clone();
    if vm.is_object() && vm["error"]["code"] != HOST_LOST {
        vm["status"] = Value::from("failed");
        vm["ip_address"] = Value::from("");
        vm["error"] = serde_json::json!({
            "code": HOST_LOST,
            "message": format!("the host {} that ran this VM left the fleet; the VM is gone, create another", entry.host),
        });
    }
    vm
}

/// Whether a status in the directory is final.
pub fn is_failed(vm: &Value) -> bool {
    vm["status"] == serde_json::to_value(Status::Failed).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_goes_first_in_the_object() {
        assert_eq!(
            with_host(br#"{"id":"a"}"#, "mac-1"),
            br#"{"host":"mac-1","id":"a"}"#
        );
        assert_eq!(with_host(b"{}", "m"), br#"{"host":"m"}"#);
        assert_eq!(with_host(b"[]", "m"), b"[]");
    }

    #[test]
    fn a_lost_vm_reads_failed_host_lost() {
        let entry = DirEntry {
            host: "mac-2".into(),
            vm: serde_json::json!({"id": "x", "status": "running", "ip_address": "10.0.0.2"}),
            deleted: false,
        };
        let vm = lost_object(&entry);
        assert_eq!(vm["status"], "failed");
        assert_eq!(vm["error"]["code"], HOST_LOST);
        assert_eq!(vm["ip_address"], "");
        assert!(is_failed(&vm));
    }
}
