//! Running many hosts as one fleet through etcd: membership, placement, forwarding. Off
//! unless `--etcd` is set; the single-host server never reaches this layer.

pub mod etcd;
pub mod forward;
pub mod front;
pub mod images;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod record;
pub mod settings;
pub mod view;

pub use node::Node;
