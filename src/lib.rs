//! osx-builder: an HTTP API that creates, inspects and destroys VMware Fusion VMs, each a
//! linked clone of a cached, verified gold image.
//!
//! The binary (`src/main.rs`) parses the settings, assembles the server (`app`) around the
//! vmrun driver and serves; the library exists so that integration tests and benchmarks
//! drive the same code the server runs. Where each concern lives, from the wire inwards:
//!
//! - `api/`: the only place HTTP exists. tiny_http's listener and thread pools (`server`),
//!   a request parsed into a typed [`api::action::Action`] (`routes`, `action`,
//!   `create_body`, `list_filter`, `query`), the token check (`auth`), and the one mapping
//!   of the core's errors to status, code and headers (`error`).
//! - `cli/`: the same binary as a client of that API.
//! - `app`: every part built from the [`config`] and connected, with the hypervisor given.
//! - `service/`: what the API's calls do, without HTTP ([`service::Service`]), with its
//!   domain error ([`service::Error`]): admission and capacity, drain, leases and their
//!   reaper, long polls, health, metrics, and the reconcile loop that keeps records true
//!   to the machine (adoption of folders without a record included).
//! - `provision/`: the worker pool that turns a recorded VM into a running linked clone:
//!   image, snapshot, clone, VMX, start, IP watch, failure handling.
//! - `vm/`: the VM as recorded and shown (model, ids, labels, guestinfo, the create
//!   request) and the store of records on disk.
//! - `hypervisor/`: [`hypervisor::Hypervisor`], the one interface in front of what runs
//!   VMs, implemented by the vmrun driver (`vmrun/`, the one place that runs vmrun) and an
//!   in-memory fake; and what VMware's files say (VMX, disk chains, locks, DHCP leases,
//!   vmware.log).
//! - `image/`: gold images: download, verification, unpacking, the cache on disk, its
//!   locks and eviction (`gold`).
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
