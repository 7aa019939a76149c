//! The coap sink: being implemented (see issue 3).

use super::net::NetShared;
use crate::sim::profile::Fleet;
use std::rc::Rc;

/// Starts the shard's coap tasks.
pub fn start(_s: &crate::config::CoapSettings, _fleet: &Fleet, _shared: Rc<NetShared>) -> Result<(), String> {
    Err("the coap sink is not implemented yet".into())
}
