//! Every host is a front door: a create is placed on the best host of the fleet (a slot
//! claimed there by compare-and-swap first) and carried out there; a call about a VM goes
//! to the host that owns it, or is answered from the fleet's directory when that host is
//! gone. Idempotency keys hold fleet-wide through `idempotency/` markers.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::etcd::EtcdError;
use super::forward::{Relayed, FORWARDED_BY, PLACED_ID};
use super::node::{lost_object, with_host, Node};
use super::placement::{self, Reason, Refusal};
use super::record::DirEntry;
use crate::service::{Created, Error as ServiceError};
use crate::vm::labels::VmFilter;
use crate::vm::{CreateVm, VmId};

/// Why the fleet could not carry out a call.
#[derive(Debug)]
pub enum FleetError {
    Service(ServiceError),
    /// No host can take the create.
    Refused(Refusal),
    /// etcd, or the host chosen, could not be reached.
    Unavailable(String),
}

impl From<EtcdError> for FleetError {
    fn from(err: EtcdError) -> Self {
        Self::Unavailable(err.to_string())
    }
}

impl From<ServiceError> for FleetError {
    fn from(err: ServiceError) -> Self {
        Self::Service(err)
    }
}

/// The parts of a create request relayed as they came.
pub struct Request<'a> {
    pub body: &'a [u8],
    /// After `?`, or empty.
    pub query: &'a str,
    /// `Authorization`, `Idempotency-Key`, `Content-Type`, as the client sent them.
    pub headers: Vec<(&'static str, String)>,
}

impl Request<'_> {
    /// The bearer token the caller sent, `""` without one: the scope of its idempotency
    /// keys in the fleet.
    fn credential(&self) -> &str {
        let value = self
            .headers
            .iter()
            .find(|(name, _)| *name == "Authorization")
            .map_or("", |(_, value)| value.trim());
        match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            _ => value,
        }
    }
}

pub enum Outcome {
    /// Created (or found by its key) here: the VM's object.
    Local(Created),
    /// The answer of the host that took it, as it gave it.
    Relayed(Relayed),
}

#[derive(Serialize, Deserialize)]
struct Marker {
    host: String,
}

/// A `GET /vms` at this front door: the query as it came (relayed to the other hosts), its
/// `host=` and its filter, and the caller's `Authorization`.
pub struct Listing<'a> {
    pub query: &'a str,
    pub host: Option<&'a str>,
    pub filter: &'a VmFilter,
    pub authorization: Option<String>,
}

/// Where a VM this host does not hold is.
pub enum Located {
    /// On another live host, at this URL.
    Remote(String),
    /// Its host left the fleet: the directory's last word, as failed `host-lost`.
    Lost(Value),
    Unknown,
}

impl Node {
    /// `POST /vms` at this front door.
    pub fn create(&self, create: CreateVm, request: &Request) -> Result<Outcome, FleetError> {
        if !self.is_joined() {
            // etcd does not answer: this host takes what it can itself, as a lone host.
            return Ok(Outcome::Local(self.service.create(create)?));
        }
        let credential = request.credential();
        let marker_key = create
            .name
            .as_ref()
            .map(|key| self.keys.idempotency(credential, key));
        if let Some(marker_key) = &marker_key {
            if let Some(host) = self.marked_host(marker_key)? {
                return self.carry_out(&host, create, None, request);
            }
        }
        let id = VmId::new();
        let tie_break = placement::fnv(id.to_string().as_bytes());
        let started = Instant::now();
        let ranked = placement::decide(&self.view, &create, tie_break);
        self.metrics.observe_decision(started.elapsed());
        let ranked = ranked.map_err(|why| {
            self.metrics.refused(&why);
            FleetError::Refused(why)
        })?;
        let mut failed_forwards = 0;
        let mut last_refusal = None;
        // The host that was chosen and did not answer, and how: when no other could take
        // the create, this is what the client is told (not that every host is full).
        let mut unanswered = None;
        for (host, reason) in ranked {
            // A pool VM is counted in its host's slots already.
            let claimed = reason != Reason::Pool && !self.claim(&host, id)?;
            if claimed {
                continue;
            }
            if let Some(marker_key) = &marker_key {
                let marker = serde_json::to_vec(&Marker { host: host.clone() }).unwrap_or_default();
                let marked = self
                    .client
                    .create_if_absent(marker_key.as_bytes(), &marker, 0)
                    .inspect_err(|_| self.release(&host, id, reason))?;
                if let Some(existing) = marked {
                    // Another front door placed this key first: its host answers.
                    self.release(&host, id, reason);
                    let theirs: Marker = serde_json::from_slice(&existing.value).map_err(|e| {
                        FleetError::Unavailable(format!("an idempotency marker is unreadable: {e}"))
                    })?;
                    return self.carry_out(&theirs.host, create, None, request);
                }
            }
            self.metrics
                .placed((failed_forwards == 0).then_some(reason));
            let placed = (reason != Reason::Pool).then_some(id);
            match self.carry_out(&host, create.clone(), placed, request) {
                Ok(Outcome::Relayed(answer)) if answer.status == 503 => {
                    // It filled up, or was cut off, since the view was read: the next one.
                    self.metrics.forward_failed("refused");
                    self.release(&host, id, reason);
                    self.unmark(marker_key.as_deref());
                    last_refusal = Some(answer);
                }
                Ok(Outcome::Relayed(answer)) if !(200..300).contains(&answer.status) => {
                    // Refused for good (a bad body, a key reused...): nothing was made there.
                    self.release(&host, id, reason);
                    self.unmark(marker_key.as_deref());
                    return Ok(Outcome::Relayed(answer));
                }
                Ok(outcome) => {
                    let made = self.record_placed(&host, &outcome);
                    if made.is_some_and(|made| made != id) {
                        // The host answered with a VM it had under this key: the slot
                        // claimed for a new one is not needed.
                        self.release(&host, id, reason);
                    }
                    return Ok(outcome);
                }
                Err(FleetError::Unavailable(why)) if failed_forwards == 0 => {
                    // Placed, but its host did not take it: once more elsewhere, same id.
                    crate::warn!("vm={id} forwarding to {host} failed ({why}); placing it once more elsewhere");
                    failed_forwards += 1;
                    self.release(&host, id, reason);
                    self.unmark(marker_key.as_deref());
                    unanswered = Some((host, why));
                }
                Err(err) => {
                    self.release(&host, id, reason);
                    self.unmark(marker_key.as_deref());
                    return Err(err);
                }
            }
        }
        match (last_refusal, unanswered) {
            (Some(answer), _) => {
                self.metrics.hosts_refused();
                Ok(Outcome::Relayed(answer))
            }
            // Counted in the forward failures, as a second forward that fails is.
            (None, Some((host, why))) => Err(FleetError::Unavailable(format!(
                "{host}, the only host that could take this create, did not answer ({why}); nothing is placed"
            ))),
            (None, None) => {
                self.metrics.refused(&Refusal::AllFull);
                Err(FleetError::Refused(Refusal::AllFull))
            }
        }
    }

    /// The directory entry of a VM just placed, unless its owner wrote one already: so that
    /// a host that dies a moment after taking a create still leaves its VM answered for.
    /// Returns the VM's id.
    fn record_placed(&self, host: &str, outcome: &Outcome) -> Option<VmId> {
        let body: &[u8] = match outcome {
            Outcome::Local(Created::New(json) | Created::Existing(json)) => json,
            Outcome::Relayed(answer) if answer.status == 202 => &answer.body,
            Outcome::Relayed(_) => return None,
        };
        let vm = serde_json::from_slice::<Value>(body).ok()?;
        let id = vm["id"].as_str()?.to_string();
        let entry = DirEntry {
            host: host.to_string(),
            vm: serde_json::from_slice(&with_host(body, host)).unwrap_or(vm),
            deleted: false,
        };
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        if let Err(err) = self
            .client
            .create_if_absent(self.keys.vm(&id).as_bytes(), &bytes, 0)
        {
            crate::warn!(
                "vm={id} recording it in the fleet's directory failed: {err}; its host records it"
            );
        }
        VmId::parse(&id)
    }

    /// A create another front door placed here (`X-OSX-Builder-Placed-Id`).
    pub fn create_placed(&self, create: CreateVm, id: Option<VmId>) -> Result<Created, FleetError> {
        if !self.is_joined() {
            return Err(FleetError::Unavailable(format!(
                "{} is cut off from the fleet and takes no creates from other hosts",
                self.name
            )));
        }
        self.create_claimed(create, id)
    }

    /// The create of a VM whose slot a front door claimed under `id` (this one or another).
    fn create_claimed(&self, create: CreateVm, id: Option<VmId>) -> Result<Created, FleetError> {
        let created = self.service.create_as(create, id)?;
        if let Some(id) = id {
            self.arrived(id);
        }
        Ok(created)
    }

    /// The live host an idempotency marker names; a marker of a host that left is removed.
    fn marked_host(&self, marker_key: &str) -> Result<Option<String>, FleetError> {
        let Some(kv) = self.client.get(marker_key.as_bytes())? else {
            return Ok(None);
        };
        let host = serde_json::from_slice::<Marker>(&kv.value)
            .map(|m| m.host)
            .ok();
        match host {
            Some(host) if self.view.host(&host).is_some() => Ok(Some(host)),
            _ => {
                self.client
                    .delete_if(marker_key.as_bytes(), kv.mod_revision)?;
                Ok(None)
            }
        }
    }

    fn unmark(&self, marker_key: Option<&str>) {
        if let Some(key) = marker_key {
            let _ = self.client.delete(key.as_bytes());
        }
    }

    /// Takes a slot of `host` for `id` if it has one free; false when it is full.
    fn claim(&self, host: &str, id: VmId) -> Result<bool, FleetError> {
        let Some(record) = self.view.host(host) else {
            return Ok(false);
        };
        let (max, held) = (u64::from(record.value.max_vms), record.value.vms);
        let now = crate::sys::time::now_ms();
        let id = id.to_string();
        Ok(self.change_slots(host, |slots| {
            let used = (slots.vms.len() as u64).max(held);
            if slots.vms.contains_key(&id) || (max > 0 && used >= max) {
                return false;
            }
            slots.vms.insert(id.clone(), now);
            true
        })?)
    }

    fn release(&self, host: &str, id: VmId, reason: Reason) {
        if reason == Reason::Pool {
            return;
        }
        let id = id.to_string();
        if let Err(err) = self.change_slots(host, |slots| slots.vms.remove(&id).is_some()) {
            crate::warn!("vm={id} freeing its slot on {host} failed: {err}; its owner frees it within a minute");
        }
    }

    /// The create on `host`: here, or forwarded with the same body, key and authorisation.
    fn carry_out(
        &self,
        host: &str,
        create: CreateVm,
        id: Option<VmId>,
        request: &Request,
    ) -> Result<Outcome, FleetError> {
        if host == self.name {
            return Ok(Outcome::Local(self.create_claimed(create, id)?));
        }
        let url =
            self.view.host(host).map(|k| k.value.url).ok_or_else(|| {
                FleetError::Unavailable(format!("the host {host} left the fleet"))
            })?;
        let mut headers = request.headers.clone();
        headers.push((FORWARDED_BY, self.name.clone()));
        if let Some(id) = id {
            headers.push((PLACED_ID, id.to_string()));
        }
        let path = if request.query.is_empty() {
            "/vms".to_string()
        } else {
            format!("/vms?{}", request.query)
        };
        self.metrics.forwarding();
        let started = Instant::now();
        let answer = self
            .peers
            .send(&url, "POST", &path, &headers, Some(request.body))
            .map_err(|why| {
                self.metrics.forward_failed(why.kind);
                FleetError::Unavailable(format!("the host {host} did not answer: {why}"))
            })?;
        self.metrics.forwarded(started.elapsed());
        Ok(Outcome::Relayed(answer))
    }

    /// Where the VM `id` is, when this host does not hold it.
    pub fn locate(&self, id: VmId) -> Result<Located, FleetError> {
        if !self.is_joined() {
            return Ok(Located::Unknown);
        }
        let Some(kv) = self.client.get(self.keys.vm(&id.to_string()).as_bytes())? else {
            return Ok(Located::Unknown);
        };
        let Ok(entry) = serde_json::from_slice::<DirEntry>(&kv.value) else {
            crate::warn!("fleet: skipped the directory entry of vm={id}: it does not parse");
            return Ok(Located::Unknown);
        };
        if entry.host == self.name || entry.deleted {
            return Ok(Located::Unknown);
        }
        match self.view.host(&entry.host) {
            Some(known) => Ok(Located::Remote(known.value.url)),
            None => Ok(Located::Lost(lost_object(&entry))),
        }
    }

    /// Relays a call about a VM to its owner.
    pub fn relay(
        &self,
        url: &str,
        method: &str,
        path_and_query: &str,
        mut headers: Vec<(&'static str, String)>,
        body: Option<&[u8]>,
    ) -> Result<Relayed, FleetError> {
        headers.push((FORWARDED_BY, self.name.clone()));
        self.metrics.proxied();
        self.peers
            .send(url, method, path_and_query, &headers, body)
            .map_err(|why| FleetError::Unavailable(format!("the VM's host did not answer: {why}")))
    }

    /// Forgets the directory entry of a VM whose host is gone (`DELETE` of a lost VM).
    /// Its entry becomes a tombstone: were the host only cut off, it destroys the VM when
    /// it comes back instead of running it on.
    pub fn forget(&self, id: VmId) -> Result<(), FleetError> {
        let key = self.keys.vm(&id.to_string());
        let Some(kv) = self.client.get(key.as_bytes())? else {
            return Ok(());
        };
        let Ok(mut entry) = serde_json::from_slice::<DirEntry>(&kv.value) else {
            return Ok(self.client.delete(key.as_bytes())?);
        };
        entry.deleted = true;
        let bytes = serde_json::to_vec(&entry).unwrap_or_default();
        // Rewritten meanwhile (its host came back): the next call sees the host.
        self.client
            .put_if(key.as_bytes(), kv.mod_revision, &bytes, 0)?;
        Ok(())
    }

    /// `GET /vms` across the fleet: this host's VMs, each live host's (asked at once, with
    /// the caller's query and authorisation), and the lost ones of hosts that left, which
    /// the filter is applied to here.
    pub fn list(&self, local: Vec<std::sync::Arc<[u8]>>, asked: &Listing) -> Vec<Vec<u8>> {
        let host = asked.host;
        let mut out: Vec<Vec<u8>> = Vec::new();
        if host.is_none_or(|h| h == self.name) {
            out.extend(local.iter().map(|json| with_host(json, &self.name)));
        }
        if !self.is_joined() {
            return out;
        }
        let others: Vec<(String, String)> = self
            .view
            .hosts()
            .into_iter()
            .filter(|k| k.value.name != self.name && host.is_none_or(|h| h == k.value.name))
            .map(|k| (k.value.name, k.value.url))
            .collect();
        let path = if asked.query.is_empty() {
            "/vms".to_string()
        } else {
            format!("/vms?{}", asked.query)
        };
        let mut headers = vec![(FORWARDED_BY, self.name.clone())];
        headers.extend(asked.authorization.clone().map(|a| ("Authorization", a)));
        let answers = self.peers.send_each(&others, "GET", &path, &headers, None);
        let answers = answers
            .into_iter()
            .filter_map(|(name, answer)| match answer {
                Ok(answer) if answer.status == 200 => Some(answer.body),
                Ok(answer) => {
                    crate::warn!("fleet: GET /vms on {name} answered {}", answer.status);
                    None
                }
                Err(why) => {
                    crate::warn!("fleet: GET /vms on {name} failed: {why}");
                    None
                }
            });
        for body in answers {
            if let Ok(Value::Array(vms)) = serde_json::from_slice::<Value>(&body) {
                out.extend(vms.iter().filter_map(|vm| serde_json::to_vec(vm).ok()));
            }
        }
        // The directory's lost VMs, of hosts no longer in the fleet.
        if let Ok((entries, _)) = self.client.range_prefix(self.keys.vms().as_bytes()) {
            for kv in entries {
                let Ok(entry) = serde_json::from_slice::<DirEntry>(&kv.value) else {
                    continue;
                };
                let gone = entry.host != self.name
                    && !entry.deleted
                    && self.view.host(&entry.host).is_none();
                if !gone || host.is_some_and(|h| h != entry.host) {
                    continue;
                }
                let vm = serde_json::to_vec(&lost_object(&entry)).unwrap_or_default();
                if asked.filter.matches_json(&vm) {
                    out.push(vm);
                }
            }
        }
        out
    }
}
