//! After the connect: connections that existed and ended without a response.
use crate::event::Event;

use super::engine::Engine;

impl Engine {
    pub(super) fn after_connect_event(&mut self, _ev: &Event) {}
}
