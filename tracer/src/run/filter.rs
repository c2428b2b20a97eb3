//! Which findings and attempts the user asked to see (`--port`, `--unix`, `--client-comm`).

use crate::event::Target;
use crate::explain::{Finding, Update};

/// Which findings and attempts the user asked to see.
pub struct Filter {
    pub ports: Vec<u16>,
    pub unix_paths: Vec<String>,
    pub comms: Vec<String>,
}

impl Filter {
    pub fn target(&self, t: &Target) -> bool {
        if self.ports.is_empty() && self.unix_paths.is_empty() {
            return true;
        }
        match t {
            Target::Tcp(a) => self.ports.contains(&a.port()),
            Target::Unix(p) => self.unix_paths.iter().any(|u| u == p),
        }
    }
    pub fn comm(&self, comm: &str) -> bool {
        self.comms.is_empty() || self.comms.iter().any(|c| c == comm)
    }
    pub fn update(&self, u: &Update) -> bool {
        match u {
            Update::Attempt(a) => self.target(&a.target) && self.comm(&a.client.comm),
            Update::Finding(f) => self.finding(f),
        }
    }
    pub fn finding(&self, f: &Finding) -> bool {
        self.target(&f.target) && (self.comms.is_empty() || f.clients.iter().any(|c| self.comm(&c.comm)))
    }
}
