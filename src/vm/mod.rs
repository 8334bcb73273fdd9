//! VMs as the API shows them and as they are kept on disk.

pub mod id;
pub mod model;
pub mod store;
pub mod vmware_log;

pub use id::VmId;
pub use model::{NetworkType, Phase, Progress, Status, Vm, VmError};
pub use store::{StoreError, VmStore};
