//! Images across the fleet: which hosts hold which gold image (from their records), and a
//! pre-warm carried to every host or to N of them, each asked for a pre-warm of its own
//! through the same relay as a forwarded create.

use std::collections::BTreeMap;

use super::forward::{Relayed, FORWARDED_BY};
use super::front::FleetError;
use super::placement::Refusal;
use super::record::HostRecord;
use super::Node;
use crate::image::gold::Prewarmed;
use crate::image::ImageSpec;
use crate::service::Error as ServiceError;

/// Where a pre-warm goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every host that is not draining.
    All,
    /// This many hosts hold it once done (those that hold it already count).
    Hosts(u32),
}

/// One host's answer to a pre-warm.
pub enum Answered {
    /// This host's own.
    Local(Box<Result<Prewarmed, ServiceError>>),
    /// Another host's, as it gave it.
    Relayed(Relayed),
    /// The host did not answer: why.
    Unreachable(String),
}

pub struct HostAnswer {
    pub host: String,
    pub answer: Answered,
}

/// The hosts a pre-warm of `checksum` goes to. Draining hosts never (they are about to be
/// emptied). For [`Scope::Hosts`], the hosts that hold the image already come first: asking
/// them again costs nothing, and so the same command run twice leaves the image on the same
/// N hosts rather than on ever more; then the hosts without it, most disk room first, those
/// without room last (they refuse by themselves if under their floor).
pub fn choose(
    records: &[&HostRecord],
    checksum: &str,
    scope: Scope,
) -> Result<Vec<String>, Refusal> {
    if records.is_empty() {
        return Err(Refusal::NoHosts);
    }
    let mut open: Vec<&HostRecord> = records.iter().copied().filter(|r| !r.draining).collect();
    if open.is_empty() {
        return Err(Refusal::AllDraining);
    }
    let holds = |r: &HostRecord| r.images.iter().any(|c| c == checksum);
    // Unknown room (an older host) after any known room, before none.
    let room = |r: &HostRecord| r.disk_room.map_or(1, |room| room);
    open.sort_by(|a, b| {
        holds(b)
            .cmp(&holds(a))
            .then(room(b).cmp(&room(a)))
            .then(a.name.cmp(&b.name))
    });
    let take = match scope {
        Scope::All => open.len(),
        Scope::Hosts(n) => usize::try_from(n).unwrap_or(usize::MAX).min(open.len()),
    };
    Ok(open
        .into_iter()
        .take(take)
        .map(|r| r.name.clone())
        .collect())
}

impl Node {
    /// Pre-warms `spec` on the hosts `scope` names: this one's own pre-warm here, the
    /// others' relayed with the caller's `Authorization`, all at once. A host cut off from
    /// the fleet does it here only, as a lone host would.
    pub fn prewarm(
        &self,
        spec: ImageSpec,
        scope: Scope,
        authorization: Option<String>,
    ) -> Result<Vec<HostAnswer>, FleetError> {
        let hosts: Vec<(String, String)> = if self.is_joined() {
            let known = self.view.hosts();
            let records: Vec<&HostRecord> = known.iter().map(|k| &k.value).collect();
            let chosen = choose(&records, &spec.checksum, scope).map_err(FleetError::Refused)?;
            chosen
                .into_iter()
                .filter_map(|name| {
                    let url = known
                        .iter()
                        .find(|k| k.value.name == name)?
                        .value
                        .url
                        .clone();
                    Some((name, url))
                })
                .collect()
        } else {
            vec![(self.name.clone(), self.url.clone())]
        };
        let mut headers = vec![
            ("Content-Type", "application/json".to_string()),
            (FORWARDED_BY, self.name.clone()),
        ];
        headers.extend(authorization.map(|value| ("Authorization", value)));
        let body = serde_json::to_vec(&spec).unwrap_or_default();
        let others: Vec<(String, String)> = hosts
            .iter()
            .filter(|(name, _)| *name != self.name)
            .cloned()
            .collect();
        let mut relayed = self
            .peers
            .send_each(&others, "POST", "/images", &headers, Some(&body));
        let mut out = Vec::with_capacity(hosts.len());
        for (name, _) in hosts {
            let answer = if name == self.name {
                Answered::Local(Box::new(self.service.prewarm(spec.clone())))
            } else {
                match relayed.remove(&name) {
                    Some(Ok(answer)) => Answered::Relayed(answer),
                    Some(Err(why)) => Answered::Unreachable(why),
                    None => Answered::Unreachable("not asked".into()),
                }
            };
            out.push(HostAnswer { host: name, answer });
        }
        Ok(out)
    }

    /// Which hosts hold each gold image, ready: this one from its cache, the others from
    /// their records.
    pub fn image_holders(&self) -> BTreeMap<String, Vec<String>> {
        let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for known in self.view.hosts() {
            if known.value.name == self.name {
                continue;
            }
            for checksum in known.value.images {
                holders
                    .entry(checksum)
                    .or_default()
                    .push(known.value.name.clone());
            }
        }
        for checksum in self.service.ready_images() {
            holders.entry(checksum).or_default().push(self.name.clone());
        }
        for names in holders.values_mut() {
            names.sort();
        }
        holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, images: &[&str], room: Option<u64>, draining: bool) -> HostRecord {
        HostRecord {
            name: name.into(),
            url: format!("http://{name}:12345"),
            hypervisor: "vmware".into(),
            max_vms: 2,
            vms: 0,
            images: images.iter().map(|s| s.to_string()).collect(),
            pools: Vec::new(),
            draining,
            disk_room: room,
            version: "0".into(),
            lease: "1".into(),
        }
    }

    #[test]
    fn holders_first_then_most_room_never_draining() {
        const G: u64 = 1 << 30;
        let hosts = [
            host("a", &[], Some(10 * G), false),
            host("b", &["x"], Some(0), false),
            host("c", &[], Some(0), false),
            host("d", &[], Some(90 * G), true),
            host("e", &[], None, false),
            host("f", &[], Some(50 * G), false),
        ];
        let records: Vec<&HostRecord> = hosts.iter().collect();
        let chosen = |scope| choose(&records, "x", scope).unwrap();
        assert_eq!(chosen(Scope::Hosts(1)), ["b"]);
        assert_eq!(chosen(Scope::Hosts(3)), ["b", "f", "a"]);
        assert_eq!(chosen(Scope::Hosts(99)), ["b", "f", "a", "e", "c"]);
        assert_eq!(chosen(Scope::All), ["b", "f", "a", "e", "c"]);
    }

    #[test]
    fn no_host_to_ask_says_why() {
        assert_eq!(choose(&[], "x", Scope::All), Err(Refusal::NoHosts));
        let draining = host("d", &[], None, true);
        assert_eq!(
            choose(&[&draining], "x", Scope::Hosts(1)),
            Err(Refusal::AllDraining)
        );
    }
}
