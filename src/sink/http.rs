//! The http sink: being implemented (see issue 3).

use super::net::NetShared;
use crate::sim::profile::Fleet;
use std::rc::Rc;

/// Starts the shard's http tasks.
pub fn start(_s: &crate::config::HttpSettings, _fleet: &Fleet, _shared: Rc<NetShared>) -> Result<(), String> {
    Err("the http sink is not implemented yet".into())
}
