//! What runs VMs: the vmrun driver and what it knows of VMware's files (VMX, disks, locks,
//! DHCP leases, vmware.log).

pub mod dependants;
pub mod guest_ip;
pub mod running;
pub mod vmrun;
pub mod vmware_log;
pub mod vmx;
