//! Gold images on a tart host (issue 26): archives holding a tart VM folder (`config.json`,
//! `disk.img`, `nvram.bin` at any depth) in every format, with the disk kept sparse; what
//! a missing file or two VMs in one archive answer; OCI images pulled by tart (the
//! simulator's pretend registry) pinned to their digest, a registry that serves other
//! content refused; a gold removed while a clone of it runs. Through the server: OCI
//! creates; a gold needed only until its VMs are cloned (a tart clone is a copy), by
//! `DELETE /images` and by eviction.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::archives::{archive, Format};
use common::{Server, TempDir};
use osx_builder::hypervisor::tart::{Tart, TartSettings, TartTimeouts};
use osx_builder::hypervisor::{Hypervisor, VmRef, VmSettings};
use osx_builder::image::{
    ChecksumType, GoldImage, HypervisorGolds, ImageCache, ImageError, ImageSettings, ImageSpec,
    VmFormat,
};
use osx_builder::sys::cancel::Cancel;
use osx_builder::vm::guestinfo::GuestInfo;
use std::sync::Arc;
use std::time::Duration;

/// The disk's apparent size: mostly holes, as a fresh macOS disk is.
const DISK_LEN: u64 = 64 << 20;
/// Where the disk has data, and how much at each place.
const DATA_AT: [u64; 3] = [0, 20 << 20, (64 << 20) - (1 << 20)];
const DATA_LEN: usize = 256 << 10;

fn config_json() -> Vec<u8> {
    serde_json::json!({"version": 1, "os": "darwin", "arch": "arm64", "cpuCount": 4,
        "cpuCountMin": 2, "memorySize": 4u64 << 30, "memorySizeMin": 2u64 << 30,
        "macAddress": "aa:bb:cc:00:00:01", "diskFormat": "raw", "display": {}})
    .to_string()
    .into_bytes()
}

/// A tart VM folder on disk, its disk sparse.
fn write_vm(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("config.json"), config_json()).unwrap();
    fs::write(dir.join("nvram.bin"), common::noise(64 << 10, 5)).unwrap();
    let disk = File::create(dir.join("disk.img")).unwrap();
    disk.set_len(DISK_LEN).unwrap();
    for (i, at) in DATA_AT.iter().enumerate() {
        disk.write_all_at(&common::noise(DATA_LEN, i as u64 + 1), *at)
            .unwrap();
    }
}

/// The files of `write_vm` as archive members under `top`, the disk written out whole.
fn vm_members(top: &str) -> Vec<(String, Vec<u8>)> {
    let mut disk = vec![0u8; DISK_LEN as usize];
    for (i, at) in DATA_AT.iter().enumerate() {
        let at = *at as usize;
        disk[at..at + DATA_LEN].copy_from_slice(&common::noise(DATA_LEN, i as u64 + 1));
    }
    vec![
        (format!("{top}config.json"), config_json()),
        (format!("{top}disk.img"), disk),
        (format!("{top}nvram.bin"), common::noise(64 << 10, 5)),
    ]
}

struct Host {
    root: TempDir,
}

impl Host {
    fn new(tag: &str) -> Host {
        Host {
            root: TempDir::new(&format!("tart-images-{tag}")),
        }
    }

    fn data(&self) -> PathBuf {
        self.root.path().join("data")
    }

    fn cache(&self) -> ImageCache {
        let mut settings = ImageSettings::new(self.data());
        settings.vm_format = VmFormat::Tart;
        ImageCache::new(settings).unwrap()
    }

    /// The tart driver against the simulator, its switches `env`.
    fn tart(&self, env: &[(&str, &str)]) -> Tart {
        let wrapper = common::tart_wrapper(self.root.path(), env);
        fs::create_dir_all(self.data().join("vms")).unwrap();
        Tart::new(TartSettings {
            path: wrapper,
            home: self.tart_home(),
            vms_dir: self.data().join("vms"),
            bridged_interface: "en0".into(),
            timeouts: TartTimeouts {
                list: Duration::from_secs(10),
                other: Duration::from_secs(10),
                ..TartTimeouts::default()
            },
        })
    }

    fn tart_home(&self) -> PathBuf {
        self.data().join("tart")
    }

    /// The cache with the tart driver as its gold host.
    fn cache_with(&self, tart: &Tart) -> ImageCache {
        let cache = self.cache();
        cache.set_gold_host(Arc::new(HypervisorGolds(Arc::new(tart.clone()))));
        cache
    }

    /// The simulator's calls so far, as argument lists.
    fn tart_calls(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(self.tart_home().join(".sim/calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `tart list --source oci` names.
    fn oci_cache(&self, tart: &Tart) -> Vec<String> {
        let _ = tart;
        let out = Command::new(common::TART_SIM_BIN)
            .args(["list", "--format", "json", "--source", "oci"])
            .env("TART_HOME", self.tart_home())
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .iter()
            .map(|i| i["Name"].as_str().unwrap().to_string())
            .collect()
    }

    /// A pretend registry's image `repo` whose manifest is `manifest`, filed under
    /// `filed_as` (its own digest, unless the registry misbehaves); returns its digest.
    fn publish_oci(
        &self,
        repo: &str,
        manifest: &[u8],
        filed_as: Option<&str>,
        mac: &str,
    ) -> String {
        let digest = common::sha256_hex(manifest);
        let dir = self
            .registry()
            .join(repo)
            .join("manifests")
            .join(format!("sha256:{}", filed_as.unwrap_or(&digest)));
        write_vm(&dir);
        let mut config: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("config.json")).unwrap()).unwrap();
        config["macAddress"] = mac.into();
        fs::write(dir.join("config.json"), config.to_string()).unwrap();
        fs::write(dir.join("manifest.json"), manifest).unwrap();
        digest
    }

    fn registry(&self) -> PathBuf {
        self.root.path().join("registry")
    }

    /// Writes `bytes` as a local image file and names it with its sha256.
    fn image(&self, name: &str, bytes: &[u8]) -> ImageSpec {
        let path = self.root.path().join(name);
        fs::write(&path, bytes).unwrap();
        self.spec_of(&path)
    }

    fn spec_of(&self, path: &Path) -> ImageSpec {
        ImageSpec {
            url: format!("file://{}", path.display()),
            checksum: common::sha256_hex(&fs::read(path).unwrap()),
            checksum_type: ChecksumType::Sha256,
        }
    }

    /// What `gold/` holds besides published images: nothing, after a failure.
    fn gold_entries(&self) -> Vec<String> {
        fs::read_dir(self.data().join("gold"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn ensure(cache: &ImageCache, spec: &ImageSpec) -> Result<GoldImage, ImageError> {
    cache.ensure(spec, &Cancel::new(), &mut |_| {})
}

/// The published disk reads back as written and takes about its data on disk, not its
/// apparent size.
fn assert_sparse_disk(gold: &GoldImage) {
    let disk = gold.config.with_file_name("disk.img");
    let meta = fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), DISK_LEN);
    let on_disk = meta.blocks() * 512;
    let data = (DATA_AT.len() * DATA_LEN) as u64;
    assert!(
        on_disk < data + (4 << 20),
        "{} takes {on_disk} bytes on disk for {data} bytes of data",
        disk.display()
    );
    let file = File::open(&disk).unwrap();
    for (i, at) in DATA_AT.iter().enumerate() {
        let mut buf = vec![0u8; DATA_LEN];
        file.read_exact_at(&mut buf, *at).unwrap();
        assert!(buf == common::noise(DATA_LEN, i as u64 + 1), "data at {at}");
    }
    let mut hole = vec![1u8; 4096];
    file.read_exact_at(&mut hole, 10 << 20).unwrap();
    assert!(hole.iter().all(|b| *b == 0));
}

#[test]
fn a_tart_vm_in_a_sub_folder_publishes_from_every_format_with_its_disk_sparse() {
    let host = Host::new("formats");
    let cache = host.cache();
    let members = vm_members("export/macos-15-base/");
    for format in [Format::Tar, Format::TarGz, Format::TarBz2, Format::Zip] {
        let spec = host.image(&format!("{format:?}.img"), &archive(format, &members));
        let gold = ensure(&cache, &spec).unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(gold.dir, host.data().join("gold").join(&spec.checksum));
        assert_eq!(
            gold.config,
            gold.dir.join("export/macos-15-base/config.json"),
            "{format:?}"
        );
        assert_eq!(fs::read(&gold.config).unwrap(), config_json());
        assert_sparse_disk(&gold);
        // Published once: the next ask finds it without reading the archive.
        fs::remove_file(spec.url.trim_start_matches("file://")).unwrap();
        assert_eq!(ensure(&cache, &spec).unwrap(), gold);
        assert_eq!(cache.lookup(&spec.checksum), Some(gold));
    }
}

#[test]
fn an_archive_without_nvram_names_what_is_missing_and_publishes_nothing() {
    let host = Host::new("incomplete");
    let cache = host.cache();
    let mut members = vm_members("vm/");
    members.retain(|(name, _)| !name.ends_with("nvram.bin"));
    for format in [Format::TarGz, Format::Zip] {
        let spec = host.image(&format!("{format:?}.img"), &archive(format, &members));
        let err = ensure(&cache, &spec).unwrap_err();
        assert_eq!(err.code(), "image-tart-vm-incomplete", "{err}");
        let text = err.to_string();
        assert!(
            text.contains("the archive holds config.json and disk.img but no nvram.bin"),
            "{text}"
        );
        assert!(text.contains("a tart VM folder needs all three"), "{text}");
        assert!(host.gold_entries().is_empty(), "{:?}", host.gold_entries());
    }
    // A VMware VM on a tart host: the message says which it is.
    let vmware = vec![
        (
            "vm/macOS.vmx".to_string(),
            b"guestOS = \"darwin\"\n".to_vec(),
        ),
        ("vm/disk.vmdk".to_string(), b"x".to_vec()),
    ];
    let spec = host.image("vmware.tar", &archive(Format::Tar, &vmware));
    let err = ensure(&cache, &spec).unwrap_err();
    assert_eq!(err.code(), "image-tart-vm-incomplete", "{err}");
    assert!(
        err.to_string().contains("holds none of config.json"),
        "{err}"
    );
    assert!(err.to_string().contains("it is a VMware VM"), "{err}");
}

#[test]
fn two_vm_folders_in_one_archive_are_refused_naming_both() {
    let host = Host::new("two");
    let cache = host.cache();
    let small = |top: &str| -> Vec<(String, Vec<u8>)> {
        ["config.json", "disk.img", "nvram.bin"]
            .iter()
            .map(|f| (format!("{top}{f}"), b"x".to_vec()))
            .collect()
    };
    let mut members = small("a/");
    members.extend(small("b/"));
    // Parts of a VM elsewhere are no second VM.
    members.push(("c/config.json".into(), b"{}".to_vec()));
    let spec = host.image("two.tar", &archive(Format::Tar, &members));
    let err = ensure(&cache, &spec).unwrap_err();
    assert_eq!(err.code(), "image-many-tart-vms", "{err}");
    let text = err.to_string();
    assert!(text.contains("a/, b/"), "{text}");
    assert!(host.gold_entries().is_empty(), "{:?}", host.gold_entries());
}

/// What the system tools make: GNU tar's own sparse formats (old GNU and pax) and Info-ZIP's
/// zip of a sparse disk all unpack to a sparse disk.
#[test]
fn gnu_tar_sparse_and_zip_of_a_sparse_disk_unpack_sparse() {
    let host = Host::new("tools");
    let cache = host.cache();
    let src = host.root.path().join("src");
    write_vm(&src.join("macos.tartvm"));
    let made = |name: &str, program: &str, args: &[&str]| {
        let out = host.root.path().join(name);
        let status = Command::new(program)
            .current_dir(&src)
            .args(args)
            .arg(&out)
            .arg("macos.tartvm")
            .status()
            .unwrap();
        assert!(status.success(), "{program} {args:?}");
        out
    };
    let archives = [
        made("gnu.tar", "tar", &["--sparse", "--format=gnu", "-cf"]),
        made("pax.tar.gz", "tar", &["--sparse", "--format=pax", "-czf"]),
        made("info.zip", "zip", &["-q", "-r"]),
    ];
    for path in archives {
        let spec = host.spec_of(&path);
        let gold = ensure(&cache, &spec).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(gold.config, gold.dir.join("macos.tartvm/config.json"));
        assert_sparse_disk(&gold);
    }
}

fn oci_spec(url: &str, digest: &str) -> ImageSpec {
    ImageSpec {
        url: url.to_owned(),
        checksum: digest.to_owned(),
        checksum_type: ChecksumType::Sha256,
    }
}

fn mac_of(config: &Path) -> String {
    let config: serde_json::Value = serde_json::from_slice(&fs::read(config).unwrap()).unwrap();
    config["macAddress"].as_str().unwrap().to_owned()
}

/// The tag names the newest image; the request pins an older one by its digest: tart is
/// asked for the digest alone, never the tag, and the gold is that image's.
#[test]
fn an_oci_image_is_pulled_by_tart_pinned_to_its_digest_never_its_tag() {
    let host = Host::new("oci");
    let registry = host.registry();
    let tart = host.tart(&[("TART_SIM_REGISTRY", registry.to_str().unwrap())]);
    let cache = host.cache_with(&tart);
    let pinned = host.publish_oci(
        "ghcr.io/org/macos",
        b"{\"v\": 1}",
        None,
        "aa:00:00:00:00:01",
    );
    let newest = host.publish_oci(
        "ghcr.io/org/macos",
        b"{\"v\": 2}",
        None,
        "aa:00:00:00:00:02",
    );
    let tags = registry.join("ghcr.io/org/macos/tags");
    fs::create_dir_all(&tags).unwrap();
    fs::write(tags.join("15"), format!("sha256:{newest}")).unwrap();

    let spec = oci_spec("oci://ghcr.io/org/macos:15", &pinned);
    let gold = ensure(&cache, &spec).unwrap();
    assert_eq!(gold.dir, host.data().join("gold").join(&pinned));
    assert_eq!(gold.config, gold.dir.join("config.json"));
    assert_eq!(
        mac_of(&gold.config),
        "aa:00:00:00:00:01",
        "the pinned image, not the tag's"
    );
    assert_sparse_disk(&gold);
    // The gold VM of tart's home is the published folder's files, not a second copy.
    let vm = host
        .tart_home()
        .join("vms")
        .join(format!("osxb-gold-{pinned}"));
    for file in ["config.json", "disk.img", "nvram.bin"] {
        let (a, b) = (
            fs::metadata(vm.join(file)).unwrap(),
            fs::metadata(gold.dir.join(file)).unwrap(),
        );
        assert_eq!(a.ino(), b.ino(), "{file}");
    }
    let calls = host.tart_calls();
    let naming: Vec<String> = calls
        .iter()
        .flat_map(|c| c["args"].as_array().unwrap().clone())
        .filter_map(|a| a.as_str().map(str::to_owned))
        .filter(|a| a.starts_with("ghcr.io"))
        .collect();
    let want = format!("ghcr.io/org/macos@sha256:{pinned}");
    assert!(!naming.is_empty());
    assert!(naming.iter().all(|a| *a == want), "{naming:?}");
    assert!(calls.iter().all(|c| c["no_auto_prune"] == true));
    let pulls =
        |calls: &[serde_json::Value]| calls.iter().filter(|c| c["args"][0] == "pull").count();
    assert_eq!(pulls(&calls), 1);
    // tart's cached copy is dropped: the gold VM is the one copy the server keeps.
    assert_eq!(host.oci_cache(&tart), Vec::<String>::new());

    // Published once: the next ask pulls nothing.
    assert_eq!(ensure(&cache, &spec).unwrap(), gold);
    assert_eq!(pulls(&host.tart_calls()), 1);
}

/// A registry (or a proxy) that serves another manifest under the digest asked for: tart
/// files it under the served digest and links the asked one to it; the server refuses it
/// and keeps nothing.
#[test]
fn a_registry_serving_another_digest_is_refused_and_nothing_is_kept() {
    let host = Host::new("oci-mismatch");
    let registry = host.registry();
    let tart = host.tart(&[("TART_SIM_REGISTRY", registry.to_str().unwrap())]);
    let cache = host.cache_with(&tart);
    let asked = "ee".repeat(32);
    let served = host.publish_oci(
        "ghcr.io/org/macos",
        b"{\"v\": 3}",
        Some(&asked),
        "aa:00:00:00:00:03",
    );
    let err = ensure(&cache, &oci_spec("oci://ghcr.io/org/macos:15", &asked)).unwrap_err();
    assert_eq!(err.code(), "image-digest-mismatch", "{err}");
    let text = err.to_string();
    assert!(text.contains(&format!("digest sha256:{served}")), "{text}");
    assert!(text.contains(&format!("checksum sha256:{asked}")), "{text}");
    assert!(host.gold_entries().is_empty(), "{:?}", host.gold_entries());
    assert!(!host
        .tart_home()
        .join(format!("vms/osxb-gold-{asked}"))
        .exists());
    assert_eq!(host.oci_cache(&tart), Vec::<String>::new());
    // No clone was made of what was pulled.
    assert!(host.tart_calls().iter().all(|c| c["args"][0] != "clone"));

    // Not in the registry at all: tart's words.
    let err = ensure(
        &cache,
        &oci_spec("oci://ghcr.io/org/macos", &"0f".repeat(32)),
    )
    .unwrap_err();
    assert_eq!(err.code(), "image-pull-failed", "{err}");
    assert!(err.to_string().contains("manifest unknown"), "{err}");

    // A VMware host has no tart to pull with.
    let vmware = Host::new("oci-vmware");
    let cache = ImageCache::new(ImageSettings::new(vmware.data())).unwrap();
    let err = ensure(&cache, &oci_spec("oci://ghcr.io/org/macos:15", &asked)).unwrap_err();
    assert_eq!(err.code(), "image-url-unsupported", "{err}");
}

/// tart's clones are copies: the gold VM goes with its image while a clone of it runs on.
#[test]
fn removing_a_gold_deletes_its_tart_vm_and_a_running_clone_survives() {
    let host = Host::new("evict");
    let tart = host.tart(&[]);
    let cache = host.cache_with(&tart);
    let spec = host.image("vm.tar", &archive(Format::Tar, &vm_members("vm/")));
    let gold = ensure(&cache, &spec).unwrap();
    tart.prepare_gold(gold.vm()).unwrap();
    let gold_vm = host
        .tart_home()
        .join(format!("vms/osxb-gold-{}", spec.checksum));
    assert!(gold_vm.join("disk.img").is_file());
    let vm = VmRef {
        id: "a".into(),
        dir: host.data().join("vms/a"),
    };
    tart.clone_vm(gold.vm(), &vm, &Cancel::new()).unwrap();
    let settings = VmSettings {
        cpus: 2,
        memory_mb: 2048,
        network_type: "nat",
        headless: true,
        image: serde_json::Value::Null,
    };
    tart.configure(&vm, gold.vm(), &settings, &GuestInfo::default())
        .unwrap();
    tart.start(&vm, true, &Cancel::new()).unwrap();

    assert!(!tart.clones_need_gold());
    let host_part = cache.gold_host().unwrap();
    host_part.remove_gold(&spec.checksum).unwrap();
    cache.unpublish(&spec.checksum).unwrap().unwrap();
    assert!(!gold_vm.exists());
    assert!(cache.lookup(&spec.checksum).is_none());
    assert_eq!(tart.list_running().unwrap(), vec![vm.dir.clone()]);
    // Removing it again is no error.
    host_part.remove_gold(&spec.checksum).unwrap();
    tart.stop(&vm, true, &Cancel::new()).unwrap();
    tart.delete_vm(&vm).unwrap();
}

/// Through the server on a tart host: a create from an OCI image and one from an archive
/// run; the OCI image is deleted while its clone runs, which goes on; a registry serving
/// other content fails the VM with `image-digest-mismatch`; bad references are 400s, and a
/// VMware server refuses `oci://`.
#[test]
fn through_the_api_oci_images_run_and_go_while_their_clones_run_on() {
    use common::{http, Hv};
    let dir = TempDir::new("tart-images-api");
    let registry = dir.path().join("registry");
    let oci = Host {
        root: TempDir::new("tart-images-api-reg"),
    };
    let digest = oci.publish_oci(
        "ghcr.io/org/macos",
        b"{\"v\": 1}",
        None,
        "aa:00:00:00:00:01",
    );
    let bad = "ee".repeat(32);
    oci.publish_oci(
        "ghcr.io/org/macos",
        b"{\"v\": 2}",
        Some(&bad),
        "aa:00:00:00:00:02",
    );
    fs::rename(oci.registry(), &registry).unwrap();
    let options = common::options_env(
        &[
            ("TART_SIM_IP_POLL_MS", "20"),
            ("TART_SIM_BOOT_MS", "100"),
            ("TART_SIM_REGISTRY", registry.to_str().unwrap()),
        ],
        &[],
    )
    .on(Hv::Tart);
    let w = common::World::start("tart-images-api", options);
    // The registry's VMs ask for 2 GiB at least (`memorySizeMin`).
    let image = |checksum: &str, kind: &str, url: &str| {
        serde_json::json!({"image": {"url": url, "checksum": checksum, "checksum_type": kind},
            "memory": 2048, "headless": true})
    };
    let pulled = w.create(&image(&digest, "sha256", "oci://ghcr.io/org/macos:15"));
    let unpacked = w.create(&w.body());
    let mismatch = w.create(&image(&bad, "sha256", "oci://ghcr.io/org/macos"));
    for id in [&pulled, &unpacked] {
        assert_eq!(w.server.wait_ready(id)["status"], "running");
    }
    let failed = w.server.wait_failed(&mismatch);
    assert_eq!(failed["error"]["code"], "image-digest-mismatch", "{failed}");

    let (status, images) = http::request("GET", &w.server.url("/images"), None, &[]);
    assert_eq!(status, 200);
    let listed = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["checksum"] == digest.as_str())
        .unwrap_or_else(|| panic!("{images}"));
    assert_eq!(listed["state"], "ready");
    assert_eq!(listed["url"], "oci://ghcr.io/org/macos:15");

    let gold_vm = w
        .dir
        .path()
        .join(format!("data/tart/vms/osxb-gold-{digest}"));
    assert!(gold_vm.join("config.json").is_file());
    let (status, _) = http::request(
        "DELETE",
        &w.server.url(&format!("/images/{digest}")),
        None,
        &[],
    );
    assert_eq!(status, 204, "{}", w.server.log());
    assert!(!gold_vm.exists());
    assert!(!w.dir.path().join("data/gold").join(&digest).exists());
    assert_eq!(w.server.get_vm(&pulled).1["status"], "running");
    assert!(Hv::Tart.running(&w.server).contains(&pulled));

    for (body, code) in [
        (
            image(&digest, "sha256", "oci://me:pw@ghcr.io/org/macos:15"),
            "invalid-image-url",
        ),
        (
            image(&"a".repeat(40), "sha1", "oci://ghcr.io/org/macos:15"),
            "invalid-checksum-type",
        ),
        (
            image(&digest, "sha256", "oci://ghcr.io/Org/macos"),
            "invalid-image-url",
        ),
    ] {
        let (status, answer) = w.server.create(&body);
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some(code)),
            "{answer}"
        );
    }
    for id in [&pulled, &unpacked, &mismatch] {
        assert_eq!(w.server.delete_vm(id).0, 204);
    }

    let vmware = Server::start(&dir.path().join("vmware"));
    let (status, answer) = vmware.create(&image(&digest, "sha256", "oci://ghcr.io/org/macos:15"));
    assert_eq!(
        (status, answer["code"].as_str()),
        (400, Some("invalid-image-url")),
        "{answer}"
    );
    assert!(
        answer["message"].as_str().unwrap().contains("runs VMware"),
        "{answer}"
    );
}

/// A tart server whose simulated VMs boot at once; `args` are its own flags.
fn tart_world(tag: &str, args: &[&str]) -> common::World {
    common::World::start(tag, tart_options(args))
}

fn tart_options(args: &[&str]) -> common::ServerOptions {
    common::options_env(
        &[("TART_SIM_IP_POLL_MS", "20"), ("TART_SIM_BOOT_MS", "100")],
        args,
    )
    .on(common::Hv::Tart)
}

/// Where a tart server keeps its gold VM of `checksum` (the hypervisor's own copy).
fn gold_tart_vm(w: &common::World, checksum: &str) -> PathBuf {
    w.server
        .data_dir
        .join(format!("tart/vms/osxb-gold-{checksum}"))
}

/// On tart a clone is a copy: a gold image is needed by the VMs still to be cloned from it,
/// and by no VM once cloned. While one VM is in its (slowed) clone and another waits behind
/// it, `DELETE /images` answers 409 naming both, and not as linked clones; once they run it
/// goes with tart's `osxb-gold-<checksum>`, they run on, and the next create downloads and
/// imports the image again.
#[test]
fn a_tart_gold_is_needed_until_its_vms_are_cloned_and_no_longer() {
    use common::{http, Hv};
    let w = tart_world("tart-gold-needed", &[]);
    // The first `tart clone` (a VM's: the gold is imported by hard links) takes 3 s.
    w.server.set_faults("clone once delay 3000\n");
    let first = w.create(&w.body());
    let seen = w.server.wait_for(&first, "cloning", |vm| {
        vm["progress"]["phase"] == "cloning" || vm["status"] != ""
    });
    assert_eq!(seen["progress"]["phase"], "cloning", "{seen}");
    let second = w.create(&w.body());
    let image_url = w.server.url(&format!("/images/{}", w.checksum));
    let (status, refused) = http::request("DELETE", &image_url, None, &[]);
    assert_eq!(
        (status, refused["code"].as_str()),
        (409, Some("image-in-use"))
    );
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains(&first)
            && message.contains(&second)
            && message.contains("still to be cloned")
            && !message.contains("linked"),
        "{refused}"
    );
    assert!(gold_tart_vm(&w, &w.checksum).join("config.json").is_file());

    for id in [&first, &second] {
        w.server.wait_ready(id);
    }
    let (_, entry) = http::request("GET", &image_url, None, &[]);
    let mut listed: Vec<&str> = entry["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    listed.sort_unstable();
    let mut ours = [first.as_str(), second.as_str()];
    ours.sort_unstable();
    assert_eq!(listed, ours, "{entry}");
    let (status, answer) = http::request("DELETE", &image_url, None, &[]);
    assert_eq!(status, 204, "{answer}\n{}", w.server.log());
    assert!(!w.server.data_dir.join("gold").join(&w.checksum).exists());
    assert!(!gold_tart_vm(&w, &w.checksum).exists());
    let running = Hv::Tart.running(&w.server);
    for id in [&first, &second] {
        assert!(running.contains(id), "{id} not in {running:?}");
        assert_eq!(w.server.get_vm(id).1["status"], "running");
    }

    for id in [&first, &second] {
        assert_eq!(w.server.delete_vm(id).0, 204);
    }
    // Downloaded and imported afresh (in the two-VM slot the others left).
    let third = w.create(&w.body());
    w.server.wait_ready(&third);
    assert!(gold_tart_vm(&w, &w.checksum).join("disk.img").is_file());
    assert_eq!(w.server.delete_vm(&third).0, 204);
}

/// Eviction on tart under a one-byte budget: the image is kept while its VM is still to be
/// cloned (and the log says so, not as linked clones), then evicted with tart's gold VM
/// while that VM runs on.
#[test]
fn a_tart_gold_is_evicted_once_its_vm_is_cloned_and_the_vm_runs_on() {
    let w = tart_world(
        "tart-gold-evict",
        &["--cache-budget", "1", "--reconcile-interval", "1"],
    );
    w.server.set_faults("clone once delay 2000\n");
    let vm = w.create(&w.body());
    let kept = format!(
        "gold image {} is not evicted: VMs are still to be cloned from it ({vm})",
        w.checksum
    );
    assert!(w.server.wait_log(&kept), "{}", w.server.log());
    w.server.wait_ready(&vm);
    let evicted = common::eventually("the eviction", || {
        let log = w.server.log();
        let line = log
            .lines()
            .find(|l| l.contains(&format!("evicting gold image {}", w.checksum)))?;
        Some(line.to_string())
    });
    assert!(
        evicted.contains("needed by no VM") && evicted.contains("--cache-budget"),
        "{evicted}"
    );
    assert!(!w.server.data_dir.join("gold").join(&w.checksum).exists());
    assert!(!gold_tart_vm(&w, &w.checksum).exists());
    assert!(!w.server.log().contains("linked clones read it"));
    assert!(common::Hv::Tart.running(&w.server).contains(&vm));
    assert_eq!(w.server.get_vm(&vm).1["status"], "running");
    assert_eq!(w.server.delete_vm(&vm).0, 204);
}

/// A server stopped between an image's removal and its tart VM's, or amid a pull or an
/// import, leaves an `osxb-gold-*` VM or an import folder in `TART_HOME` (tens of GiB on a
/// Mac): the next start removes them, the VM with `tart delete`, and nothing else: not the
/// gold of a published image, not the server's clone (which runs on), not a person's VMs.
#[test]
fn a_start_removes_stray_tart_golds_and_nothing_else() {
    let w = tart_world("tart-stray-golds", &[]);
    let vm = w.create(&w.body());
    w.server.wait_ready(&vm);
    let common::World {
        dir,
        files: _files,
        server,
        checksum,
        ..
    } = w;
    server.kill();
    let tart_home = dir.path().join("data/tart");
    let stray_sum = common::sha256_hex(b"an image removed as its server died");
    let stray_name = format!("osxb-gold-{stray_sum}");
    let stray = tart_home.join("vms").join(&stray_name);
    let staging = tart_home.join(format!("tmp/osxb-gold-{checksum}.import"));
    let kept = [
        tart_home.join(format!("vms/osxb-gold-{checksum}")),
        tart_home.join(format!("vms/osxb-{vm}")),
        tart_home.join("vms/mine"),
        tart_home.join(format!("vms/gold-{stray_sum}")),
        tart_home.join("vms/osxb-gold-notes"),
    ];
    for dir in [&stray, &staging, &kept[2], &kept[3], &kept[4]] {
        write_vm(dir);
    }

    let server = Server::start_with(dir.path(), tart_options(&[]));
    assert!(!stray.exists(), "{}", server.log());
    assert!(!staging.exists(), "{}", server.log());
    for dir in &kept {
        assert!(dir.join("disk.img").is_file(), "{} went", dir.display());
    }
    let log = server.log();
    for removed in [
        format!("removed the tart VM {stray_name}"),
        format!("removed {}: the staging folder", staging.display()),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&removed) && l.contains("WARN")),
            "{removed} not in\n{log}"
        );
    }
    let deleted: Vec<Vec<String>> = server
        .sim_calls()
        .iter()
        .map(|call| {
            common::sim_call_args(call)
                .iter()
                .map(|a| a.to_string())
                .collect()
        })
        .filter(|args: &Vec<String>| args.first().is_some_and(|a| a == "delete"))
        .collect();
    assert_eq!(deleted, vec![vec!["delete".to_string(), stray_name]]);
    assert_eq!(server.get_vm(&vm).1["status"], "running");
    assert_eq!(server.delete_vm(&vm).0, 204);
}
