//! osx-builder: an HTTP API that creates, inspects and destroys macOS VMs, each a clone of a
//! cached, verified gold image: on Intel Macs through VMware Fusion (`vmrun`), on Apple
//! Silicon Macs through tart; one host alone, or a fleet of hosts on etcd.
//!
//! The binary (`src/main.rs`) parses the settings, assembles the server (`app`) around the
//! hypervisor it is given and serves; the library exists so that integration tests and
//! benchmarks drive the same code the server runs. Where each concern lives, from the wire
//! inwards:
//!
//! - `api/`: the only place HTTP exists. tiny_http's listener and thread pools (`server`),
//!   a request parsed into a typed [`api::action::Action`] (`routes`, `action`,
//!   `create_body`, `list_filter`, `query`), the token check (`auth`), and the one mapping
//!   of the core's errors to status, code and headers (`error`).
//! - `cli/`: the same binary as a client of that API.
//! - `app`: every part built from the [`config`] and connected, with the hypervisor given.
//! - `fleet/`: hosts on etcd: membership, placement, forwarding, the fleet's view.
//! - `service/`: what the API's calls do, without HTTP ([`service::Service`]), with its
//!   domain error ([`service::Error`]): admission and capacity, drain, leases and their
//!   reaper, long polls, warm pools, health, metrics, and the reconcile loop that keeps
//!   records true to the machine (adoption of folders without a record included).
//! - `provision/`: the worker pool that turns a recorded VM into a running clone: image,
//!   gold made ready, clone, configure, start, IP watch, failure handling.
//! - `vm/`: the VM as recorded and shown (model, ids, labels, guestinfo, the create
//!   request) and the store of records on disk.
//! - `hypervisor/`: [`hypervisor::Hypervisor`], the one interface in front of what runs
//!   VMs. It names a VM by [`hypervisor::VmRef`] (id and folder) and a gold image by
//!   [`hypervisor::GoldVm`]; nothing above it knows which hypervisor runs. Its drivers are
//!   the one place that runs their tool: `vmrun/` (with what is VMware's: VMX, snapshots,
//!   linked-clone parents, `.lck` folders, `vmware.log`, DHCP leases) and `tart/`; and an
//!   in-memory fake for the service's unit tests.
//! - `image/`: gold images: download, verification, unpacking (VMware and tart VM
//!   folders), OCI pulls through the hypervisor, the cache on disk, its locks and eviction
//!   (`gold`).
//! - `guard/`: what clients may reach: local image folders, callback targets, VMX lines.
//! - `callback/`: delivery of callbacks and their signatures.
//! - `tls/`: the trust of outgoing HTTPS and the server's own certificate.
//! - `sys/`: logging, time, crash-safe files, free disk, locks, signals, cancellation.

pub mod api;
pub mod app;
pub mod callback;
pub mod cli;
pub mod config;
pub mod fleet;
pub(crate) mod guard;
pub mod hypervisor;
pub mod image;
pub(crate) mod provision;
pub(crate) mod service;
pub mod sys;
pub mod tls;
pub mod vm;
