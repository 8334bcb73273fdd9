//! Gold images as tart keeps them: the local VM `osxb-gold-<checksum>` of the server's
//! `TART_HOME`. An archive's gold is imported from its verified folder (`prepare_gold`); an
//! OCI image is pulled by tart pinned to its digest, checked to be what was asked for, and
//! cloned into that VM (`pull_gold`). A clone is a copy-on-write copy that does not read its
//! gold afterwards, so removing a gold never breaks a VM.

use std::ffi::OsString;
use std::fs;
use std::path::Path;

use super::{Tart, PREFIX};
use crate::hypervisor::HypervisorError;
use crate::sys::cancel::Cancel;

/// A tart VM's files; a folder without one of them is no VM to tart.
pub const VM_FILES: [&str; 3] = ["config.json", "disk.img", "nvram.bin"];

/// The tart name of the gold image of `checksum`.
pub fn gold_vm_name(checksum: &str) -> String {
    format!("{PREFIX}gold-{}", &checksum[..checksum.len().min(64)])
}

/// The checksum in the name of a gold VM as the server makes them (`osxb-gold-<hex>`, lower
/// case); `None` for any other name, which the server never removes as a gold.
fn gold_checksum_of(name: &str) -> Option<&str> {
    let hex = name.strip_prefix(PREFIX)?.strip_prefix("gold-")?;
    let made_here = !hex.is_empty() && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    made_here.then_some(hex)
}

/// Gives `dst` (created) the VM files of `src` as hard links, or copies where the two are on
/// different volumes (a `TART_HOME` elsewhere): the gold's bytes are on the disk once.
pub fn link_vm_files(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for file in VM_FILES {
        let (from, to) = (src.join(file), dst.join(file));
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to)?;
        }
    }
    Ok(())
}

/// Refuses `cpus` and `memory_mb` below the minimums of the gold VM whose `config.json` is
/// `config` (`cpuCountMin`; `memorySizeMin` in bytes, as tart compares it). A config that
/// cannot be read says nothing: `tart set` judges the clone then.
pub fn check_fits(config: &Path, cpus: u32, memory_mb: u32) -> Result<(), HypervisorError> {
    let Some(config) = fs::read(config)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
    else {
        return Ok(());
    };
    let min = |key: &str| config.get(key).and_then(serde_json::Value::as_u64);
    if let Some(minimum) = min("cpuCountMin").filter(|&m| u64::from(cpus) < m) {
        return Err(HypervisorError::BelowMinimum {
            field: "cpus",
            minimum,
            requested: cpus.into(),
        });
    }
    const MIB: u64 = 1024 * 1024;
    if let Some(bytes) = min("memorySizeMin").filter(|&m| u64::from(memory_mb) * MIB < m) {
        return Err(HypervisorError::BelowMinimum {
            field: "memory",
            minimum: bytes.div_ceil(MIB),
            requested: memory_mb.into(),
        });
    }
    Ok(())
}

impl Tart {
    /// `tart pull <repository>@sha256:<digest>` (never a tag), the pull checked against the
    /// digest, `tart clone` of it as `osxb-gold-<digest>`, its files linked into `into`,
    /// and tart's cached copy dropped (the gold VM is the server's one copy).
    pub(super) fn pull_gold_vm(
        &self,
        repository: &str,
        digest: &str,
        into: &Path,
        cancel: &Cancel,
    ) -> Result<(), HypervisorError> {
        let pinned = format!("{repository}@sha256:{digest}");
        let name = gold_vm_name(digest);
        let timeouts = &self.settings.timeouts;
        self.call(
            "pull",
            Some(&pinned),
            &[pinned.clone().into()],
            timeouts.pull,
            Some(cancel),
        )?;
        self.check_pulled(repository, digest)?;
        // Left by a pull that did not finish publishing: nothing clones from a gold before
        // its image is published.
        if self.exists(&name) {
            self.delete_named(&name)?;
        }
        let args: [OsString; 2] = [pinned.clone().into(), name.clone().into()];
        self.call("clone", Some(&name), &args, timeouts.clone, Some(cancel))?;
        if let Err(err) = self.delete_named(&pinned) {
            crate::warn!("tart's cached copy of {pinned} stays in its OCI cache: {err}");
        }
        let vm_dir = self.settings.home.join("vms").join(&name);
        link_vm_files(&vm_dir, into).map_err(|e| HypervisorError::Refused {
            code: "image-io",
            message: format!(
                "cannot link the gold VM {} into {}: {e}; check the free space and permissions of the data folder",
                vm_dir.display(),
                into.display()
            ),
        })
    }

    /// tart files an image under the digest of the manifest the registry served and only
    /// links the name asked for to it: the cache must hold the digest itself, not a link.
    fn check_pulled(&self, repository: &str, digest: &str) -> Result<(), HypervisorError> {
        let pinned = format!("{repository}@sha256:{digest}");
        let listed = self.list_json(&["--source", "oci"])?;
        let pulled = listed.iter().any(|image| {
            image.get("Name").and_then(serde_json::Value::as_str) == Some(pinned.as_str())
        });
        if pulled {
            return Ok(());
        }
        let link = self
            .settings
            .home
            .join("cache/OCIs")
            .join(repository)
            .join(format!("sha256:{digest}"));
        let served = fs::read_link(&link)
            .ok()
            .and_then(|target| Some(target.file_name()?.to_string_lossy().into_owned()))
            .filter(|name| name.starts_with("sha256:"));
        for stale in [
            Some(pinned.clone()),
            served.as_ref().map(|s| format!("{repository}@{s}")),
        ]
        .into_iter()
        .flatten()
        {
            let _ = self.delete_named(&stale);
        }
        Err(HypervisorError::Refused {
            code: "image-digest-mismatch",
            message: format!(
                "tart pulled {pinned}, but the manifest the registry served has digest {}, not \
                 the image checksum sha256:{digest}: the registry (or a proxy in front of it) \
                 serves other content under that digest; nothing was kept: check image.checksum \
                 against `crane digest` or the registry's page of the image",
                served.as_deref().unwrap_or("another one")
            ),
        })
    }

    /// `tart delete NAME`; a VM or image that is not there counts as deleted.
    pub(super) fn delete_named(&self, name: &str) -> Result<(), HypervisorError> {
        match self.call(
            "delete",
            Some(name),
            &[name.into()],
            self.settings.timeouts.delete,
            None,
        ) {
            Ok(_) | Err(HypervisorError::VmOpenError { .. }) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// `tart list --format json ARGS...`, parsed.
    pub(super) fn list_json(
        &self,
        args: &[&str],
    ) -> Result<Vec<serde_json::Value>, HypervisorError> {
        let mut argv: Vec<OsString> = vec!["--format".into(), "json".into()];
        argv.extend(args.iter().map(OsString::from));
        let out = self.call("list", None, &argv, self.settings.timeouts.list, None)?;
        serde_json::from_str(&out).map_err(|e| HypervisorError::BadOutput {
            call: crate::hypervisor::Call {
                tool: "tart",
                command: "list",
                vm: None,
            },
            problem: format!("not a JSON array: {e}"),
            output: out.chars().take(300).collect(),
        })
    }

    /// Deletes the gold VMs of images that are not `published` (a crash between an image's
    /// removal and its VM's, a pull cut short after its clone), with `tart delete`, and the
    /// import staging folders in `TART_HOME/tmp` (only a prepare in flight uses one, and none
    /// runs at start), as `prepare_gold` removes them. A person's VMs, the server's clones
    /// and published golds are not golds to remove. Returns what was removed.
    pub(super) fn remove_stray_gold_vms(&self, published: &[String]) -> Vec<String> {
        let keep: std::collections::HashSet<String> =
            published.iter().map(|c| gold_vm_name(c)).collect();
        let home = self.settings.home.display();
        let mut removed = Vec::new();
        match self.list_ours() {
            Ok(vms) => {
                let strays = vms.into_iter().filter(|(name, _)| {
                    gold_checksum_of(name).is_some() && !keep.contains(name.as_str())
                });
                for (name, _) in strays {
                    match self.delete_named(&name) {
                        Ok(()) => {
                            crate::warn!(
                                "removed the tart VM {name} of TART_HOME={home}: the gold of an image no longer in the cache (left by a server stopped amid the image's removal or its pull)"
                            );
                            removed.push(name);
                        }
                        Err(err) => crate::warn!(
                            "the stray gold VM {name} of TART_HOME={home} stays until a later start: {err}"
                        ),
                    }
                }
            }
            Err(err) => crate::warn!(
                "cannot list tart's VMs to find stray gold images; they stay until a later start: {err}"
            ),
        }
        let tmp = self.settings.home.join("tmp");
        for entry in fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // `prepare_gold` assembles `<gold name>.import` here, then renames it into `vms/`.
            let ours = name
                .strip_suffix(".import")
                .is_some_and(|vm| gold_checksum_of(vm).is_some());
            if !ours {
                continue;
            }
            let path = entry.path();
            match fs::remove_dir_all(&path) {
                Ok(()) => {
                    crate::warn!(
                        "removed {}: the staging folder of a gold image's import cut short by a stopped server",
                        path.display()
                    );
                    removed.push(path.display().to_string());
                }
                Err(err) => crate::warn!(
                    "the stray import folder {} stays until a later start: {err}",
                    path.display()
                ),
            }
        }
        removed
    }

    /// Deletes the gold VM of `checksum`; its clones are copies and go on.
    pub(super) fn remove_gold_vm(&self, checksum: &str) -> Result<(), HypervisorError> {
        if checksum.is_empty() || !checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(());
        }
        self.delete_named(&gold_vm_name(checksum))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_names_the_server_gives_golds_are_golds() {
        let sum = "5cf00d380e28d02f30efaceafef7c7c8bdedae33";
        assert_eq!(gold_checksum_of(&gold_vm_name(sum)), Some(sum));
        for name in [
            "osxb-5cf00d38",
            "osxb-gold-",
            "osxb-gold-5CF00D38",
            "osxb-gold-notes",
            "gold-5cf00d38",
            "mine",
        ] {
            assert_eq!(gold_checksum_of(name), None, "{name}");
        }
    }

    #[test]
    fn a_request_below_the_golds_minimums_is_refused_naming_them() {
        let dir = std::env::temp_dir().join(format!("tart-fits-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.json");
        fs::write(
            &config,
            r#"{"cpuCountMin": 4, "memorySizeMin": 8589934592, "cpuCount": 4}"#,
        )
        .unwrap();
        assert!(check_fits(&config, 4, 8192).is_ok());
        let err = check_fits(&config, 2, 8192).unwrap_err();
        assert_eq!(err.code(), "invalid-cpus");
        assert!(err.to_string().contains("minimum of 4 CPUs"), "{err}");
        let err = check_fits(&config, 4, 8188).unwrap_err();
        assert_eq!(err.code(), "invalid-memory");
        assert!(err.to_string().contains("minimum of 8192 MB"), "{err}");
        // No minimums, or no readable config: nothing to refuse here.
        fs::write(&config, r#"{"cpuCount": 4}"#).unwrap();
        assert!(check_fits(&config, 1, 512).is_ok());
        assert!(check_fits(&dir.join("none.json"), 1, 512).is_ok());
        let _ = fs::remove_dir_all(&dir);
    }
}
