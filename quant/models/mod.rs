//! Reference models.

mod net;

pub use net::{IntNet, LayerOutputs, Net, QNet};
