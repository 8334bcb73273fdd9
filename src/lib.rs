//! osx-builder: an HTTP API that creates, inspects and destroys VMware Fusion VMs, each a
//! linked clone of a cached, verified gold image.
//!
//! The binary (`src/main.rs`) wires these modules together; the library exists so that
//! integration tests and benchmarks can drive the same code the server runs.

pub mod api;
pub mod app;
pub mod callback;
pub mod cli;
pub mod config;
pub mod guard;
pub mod hypervisor;
pub mod image;
pub mod provision;
pub mod service;
pub mod sys;
pub mod tls;
pub mod vm;
