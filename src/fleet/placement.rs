//! Where a create goes: a pure ranking of the hosts the fleet view holds. A host with an
//! idle warm-pool VM that matches comes first (the VM is booted: the answer is seconds, not
//! minutes), then one that holds the image (no download), then the one with most free
//! slots; draining and full hosts never, nor one that would have to download the image
//! without disk room for it. Ties are broken by a hash of the VM's id, so front
//! doors that decide at once spread over equal hosts instead of racing for one.

use std::cmp::Reverse;

use crate::vm::CreateVm;

use super::record::HostRecord;
use super::view::View;

/// Best first: the order of the variants is the order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// An idle warm-pool VM matches.
    Pool,
    /// The gold image is there.
    Image,
    /// Free slots only (the image will be downloaded).
    Slots,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pool => "pool",
            Reason::Image => "image",
            Reason::Slots => "slots",
        }
    }
}

/// Why no host can take a create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    NoHosts,
    AllDraining,
    AllFull,
    /// The hosts with a free slot lack the image and the disk room to download it.
    NoDiskRoom,
}

impl Refusal {
    /// The `reason` label of `osx_builder_fleet_refusals_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::NoHosts => "no-hosts",
            Refusal::AllDraining => "all-draining",
            Refusal::AllFull => "all-full",
            Refusal::NoDiskRoom => "no-disk-room",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::NoHosts => "no host of the fleet is alive",
            Refusal::AllDraining => "every host of the fleet is draining",
            Refusal::AllFull => "every host of the fleet that is not draining is full (--max-vms)",
            Refusal::NoDiskRoom => "no host of the fleet with a free slot holds the image, and none of them has disk room to download it (under 1 GiB free above its --min-free-disk); free disk space, or pre-warm the image where there is room",
        })
    }
}

/// A host as placement sees it: its record and the VMs placed on it (its slots).
pub struct Candidate<'a> {
    pub record: &'a HostRecord,
    pub placed: u64,
}

impl Candidate<'_> {
    /// Free slots; `u64::MAX` without a limit.
    pub fn free(&self) -> u64 {
        if self.record.max_vms == 0 {
            return u64::MAX;
        }
        let used = self.placed.max(self.record.vms);
        u64::from(self.record.max_vms).saturating_sub(used)
    }

    /// Room to download an image; a host that does not say (an older one) is given the
    /// benefit of the doubt: it refuses by itself when its disk is under its floor.
    pub fn has_disk_room(&self) -> bool {
        self.record.disk_room.is_none_or(|room| room > 0)
    }

    fn has_idle_match(&self, create: &CreateVm) -> bool {
        self.record
            .pools
            .iter()
            .any(|pool| pool.ready > 0 && pool.spec.matches(create))
    }
}

/// The hosts that can take `create`, best first, each with why it was chosen.
pub fn rank(
    candidates: &[Candidate],
    create: &CreateVm,
    tie_break: u64,
) -> Result<Vec<(String, Reason)>, Refusal> {
    if candidates.is_empty() {
        return Err(Refusal::NoHosts);
    }
    let open = candidates.iter().filter(|c| !c.record.draining);
    if open.clone().next().is_none() {
        return Err(Refusal::AllDraining);
    }
    let mut ranked: Vec<(Reason, Reverse<u64>, u64, &str)> = Vec::new();
    let mut without_room = 0;
    for c in open {
        let free = c.free();
        // A pool VM is already counted in its host's slots: a full host can hand it out.
        let reason = if c.has_idle_match(create) {
            Reason::Pool
        } else if free == 0 {
            continue;
        } else if c.record.images.contains(&create.image.checksum) {
            Reason::Image
        } else if !c.has_disk_room() {
            without_room += 1;
            continue;
        } else {
            Reason::Slots
        };
        let spread = fnv(c.record.name.as_bytes()) ^ tie_break;
        ranked.push((reason, Reverse(free), spread, c.record.name.as_str()));
    }
    if ranked.is_empty() {
        return Err(if without_room > 0 {
            Refusal::NoDiskRoom
        } else {
            Refusal::AllFull
        });
    }
    // The name only settles a collision of the spread hashes: compared last, and only then
    // (a thousand hosts sort in tens of microseconds this way).
    ranked.sort_unstable_by(|a, b| {
        (a.0, a.1, a.2)
            .cmp(&(b.0, b.1, b.2))
            .then_with(|| a.3.cmp(b.3))
    });
    Ok(ranked
        .into_iter()
        .map(|(reason, _, _, name)| (name.to_string(), reason))
        .collect())
}

/// The ranking of every host `view` holds, each with the VMs placed on it (its slots).
pub fn decide(
    view: &View,
    create: &CreateVm,
    tie_break: u64,
) -> Result<Vec<(String, Reason)>, Refusal> {
    view.with_hosts(|hosts, slots| {
        let candidates: Vec<Candidate> = hosts
            .values()
            .map(|known| Candidate {
                record: &known.value,
                placed: slots
                    .get(&known.value.name)
                    .map_or(0, |s| s.value.vms.len() as u64),
            })
            .collect();
        rank(&candidates, create, tie_break)
    })
}

/// FNV-1a: a cheap, stable spread of names (not a security measure).
pub fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::record::PoolIdle;
    use crate::image::ImageSpec;
    use crate::service::pools::spec::PoolSpec;
    use crate::vm::NetworkType;

    fn create(checksum: &str) -> CreateVm {
        PoolSpec {
            image: ImageSpec {
                url: "http://images/a.tar.gz".into(),
                checksum: checksum.into(),
                checksum_type: crate::image::ChecksumType::Sha1,
            },
            cpus: 2,
            memory: 2048,
            network_type: NetworkType::Nat,
            headless: true,
            size: 0,
        }
        .request()
    }

    fn host(name: &str, max_vms: u32, vms: u64) -> HostRecord {
        HostRecord {
            name: name.into(),
            url: format!("http://{name}:12345"),
            hypervisor: "vmware".into(),
            max_vms,
            vms,
            images: Vec::new(),
            pools: Vec::new(),
            draining: false,
            disk_room: None,
            version: "0".into(),
            lease: "1".into(),
        }
    }

    /// Each host with its own VMs as its slots.
    fn rank_hosts(
        hosts: &[&HostRecord],
        create: &CreateVm,
    ) -> Result<Vec<(String, Reason)>, Refusal> {
        let candidates: Vec<Candidate> = hosts
            .iter()
            .map(|r| Candidate {
                record: r,
                placed: r.vms,
            })
            .collect();
        rank(&candidates, create, 7)
    }

    fn names(ranked: &[(String, Reason)]) -> Vec<(&str, Reason)> {
        ranked.iter().map(|(n, r)| (n.as_str(), *r)).collect()
    }

    #[test]
    fn pool_then_image_then_free_slots() {
        let wanted = create("aaaa");
        let mut pooled = host("pooled", 2, 2);
        pooled.pools.push(PoolIdle {
            name: "p".into(),
            spec: PoolSpec::from_create(&wanted, 1),
            ready: 1,
        });
        let mut cached = host("cached", 2, 1);
        cached.images.push("aaaa".into());
        let roomy = host("roomy", 8, 0);
        let hosts = [&roomy, &cached, &pooled];
        let ranked = rank_hosts(&hosts, &wanted).unwrap();
        assert_eq!(
            names(&ranked),
            [
                ("pooled", Reason::Pool),
                ("cached", Reason::Image),
                ("roomy", Reason::Slots)
            ]
        );
        // Another image: the full pooled host is out, the others by free slots.
        let ranked = rank_hosts(&hosts, &create("bbbb")).unwrap();
        assert_eq!(
            names(&ranked),
            [("roomy", Reason::Slots), ("cached", Reason::Slots)]
        );
    }

    #[test]
    fn slots_claimed_count_even_before_the_host_has_the_vm() {
        let a = host("a", 2, 0);
        let candidates = [Candidate {
            record: &a,
            placed: 2,
        }];
        assert_eq!(rank(&candidates, &create("x"), 0), Err(Refusal::AllFull));
        let unlimited = host("u", 0, 500);
        let candidates = [Candidate {
            record: &unlimited,
            placed: 500,
        }];
        assert_eq!(rank(&candidates, &create("x"), 0).unwrap().len(), 1);
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(rank(&[], &create("x"), 0), Err(Refusal::NoHosts));
        let mut draining = host("d", 2, 0);
        draining.draining = true;
        let candidates = [Candidate {
            record: &draining,
            placed: 0,
        }];
        assert_eq!(
            rank(&candidates, &create("x"), 0),
            Err(Refusal::AllDraining)
        );
        let full = host("f", 1, 1);
        let candidates = [
            Candidate {
                record: &draining,
                placed: 0,
            },
            Candidate {
                record: &full,
                placed: 1,
            },
        ];
        assert_eq!(rank(&candidates, &create("x"), 0), Err(Refusal::AllFull));
    }

    #[test]
    fn a_host_without_the_image_needs_disk_room() {
        let mut cached = host("cached", 2, 0);
        cached.images.push("aaaa".into());
        cached.disk_room = Some(0);
        let mut full_disk = host("full-disk", 2, 0);
        full_disk.disk_room = Some(0);
        let mut roomy = host("roomy", 2, 0);
        roomy.disk_room = Some(40 << 30);
        let rank_of = |hosts: &[&HostRecord], checksum: &str| rank_hosts(hosts, &create(checksum));
        // The image is there: no download, no room needed.
        let ranked = rank_of(&[&cached, &full_disk, &roomy], "aaaa").unwrap();
        assert_eq!(
            names(&ranked),
            [("cached", Reason::Image), ("roomy", Reason::Slots)]
        );
        // Another image: only the host with room.
        let ranked = rank_of(&[&cached, &full_disk, &roomy], "bbbb").unwrap();
        assert_eq!(names(&ranked), [("roomy", Reason::Slots)]);
        // None has room, and none holds it: the refusal says so.
        assert_eq!(
            rank_of(&[&cached, &full_disk], "bbbb"),
            Err(Refusal::NoDiskRoom)
        );
        // Full hosts alone: all full, whatever their disks.
        let full = host("full", 1, 1);
        assert_eq!(rank_of(&[&full], "bbbb"), Err(Refusal::AllFull));
        // A host that does not say (an older version) may be tried.
        let silent = host("silent", 2, 0);
        assert_eq!(rank_of(&[&silent], "bbbb").unwrap().len(), 1);
    }

    #[test]
    fn ties_spread_by_the_vm() {
        let (a, b) = (host("a", 4, 0), host("b", 4, 0));
        let candidates = [
            Candidate {
                record: &a,
                placed: 0,
            },
            Candidate {
                record: &b,
                placed: 0,
            },
        ];
        let firsts: std::collections::HashSet<String> = (0..64u64)
            .map(|n| {
                rank(&candidates, &create("x"), fnv(&n.to_le_bytes())).unwrap()[0]
                    .0
                    .clone()
            })
            .collect();
        assert_eq!(firsts.len(), 2);
    }
}
