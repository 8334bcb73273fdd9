//! An idempotency key binds the request it first came with (as Stripe's do): a retry with
//! another body is a client bug or a collision of keys, and answering it with the first VM
//! would hand the client a VM it did not ask for.

use crate::vm::CreateVm;
use crate::vm::Vm;

/// The fields of `request` that differ from what `vm` was created with. The lease is not
/// compared: renews change it.
pub fn differing_fields(vm: &Vm, request: &CreateVm) -> Vec<&'static str> {
    let mut differ = Vec::new();
    match &vm.image {
        Some(image) => {
            if image.url != request.image.url {
                differ.push("image.url");
            }
            if image.checksum != request.image.checksum {
                differ.push("image.checksum");
            }
            if image.checksum_type != request.image.checksum_type {
                differ.push("image.checksum_type");
            }
        }
        None => differ.push("image"),
    }
    if vm.cpus != request.cpus {
        differ.push("cpus");
    }
    if vm.memory != request.memory {
        differ.push("memory");
    }
    if vm.network_type != request.network_type {
        differ.push("network_type");
    }
    if vm.headless != request.headless {
        differ.push("headless");
    }
    if vm.callback_url != request.callback_url {
        differ.push("callback_url");
    }
    differ
}
