//! osx-builder: an HTTP API that creates, inspects and destroys VMware Fusion VMs, each a
//! linked clone of a cached, verified gold image.
//!
//! The binary (`src/main.rs`) wires these modules together; the library exists so that
//! integration tests and benchmarks can drive the same code the server runs.

pub mod log;

pub mod api;
pub mod auth;
pub mod callback;
pub mod cancel;
pub mod capacity;
pub mod cli;
pub mod config;
pub mod data_lock;
pub mod dependants;
pub mod disk;
pub mod drain;
pub mod fd_limit;
pub mod fsutil;
pub mod gold;
pub mod guard;
pub mod guest_ip;
pub mod guestinfo;
pub mod health;
pub mod image;
pub mod labels;
pub mod leases;
pub mod long_poll;
pub mod metrics;
pub mod provision;
pub mod reconcile;
pub mod running;
pub mod service;
pub mod shutdown;
pub mod signing;
mod sync;
pub mod tls;
pub mod tls_server;
pub mod vm;
pub mod vmrun;
pub mod vmx;
