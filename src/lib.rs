//! osx-builder: an HTTP API that creates, inspects and destroys VMware Fusion VMs, each a
//! linked clone of a cached, verified gold image.
//!
//! The binary (`src/main.rs`) wires these modules together; the library exists so that
//! integration tests and benchmarks can drive the same code the server runs.

pub mod auth;
pub mod cancel;
pub mod disk;
pub mod image;
pub mod log;
pub mod metrics;
pub mod signing;
pub mod vmrun;
pub mod vmx;
