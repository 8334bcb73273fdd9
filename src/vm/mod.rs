//! VMs as the API shows them and as they are kept on disk.

pub mod create;
pub mod guestinfo;
pub mod id;
pub mod labels;
pub mod model;
pub mod store;

pub use create::CreateVm;
pub use id::VmId;
pub use model::{NetworkType, Phase, Progress, Status, Vm, VmError};
pub use store::{StoreError, VmStore};
