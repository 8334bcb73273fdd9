//! VMs as the API shows them and as they are kept on disk.

pub(crate) mod capacity;
pub(crate) mod create;
pub(crate) mod guestinfo;
pub(crate) mod id;
pub(crate) mod journal;
pub(crate) mod labels;
pub(crate) mod model;
pub(crate) mod store;

pub use create::CreateVm;
pub use id::VmId;
pub use model::{NetworkType, Phase, Progress, Status, Vm, VmError};
pub use store::{StoreError, VmStore};
