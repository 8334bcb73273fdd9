//! Running many hosts as one fleet through etcd: membership, placement, forwarding. Off
//! unless `--etcd` is set; the single-host server never reaches this layer.

pub mod etcd;
