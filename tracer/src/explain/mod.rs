//! PURE explanation engine: decoded events in, findings out. Never touches the kernel, the
//! clock or /proc; the same events always give the same findings.
//!
//! The rooms, in the order an event passes through them:
//! - `engine`: the `Engine`'s state and entry points (`push`, `tick`, `finish`, `findings`);
//! - `correlation`: which attempt an event belongs to (by socket, flow or addresses), with
//!   the bounded buffers where evidence waits for its attempt (`buffer`);
//! - `attempt`: one TCP connection attempt (keyed by socket + flow) and what was matched to it;
//! - `listeners`: who listened where and when, and how full their queues were;
//! - `conclusion`: an attempt's facts turned into a cause through the one rule table;
//! - `rules`: THE verdict table: an attempt's facts to its cause;
//! - `cause_words`: each cause's title, detail and fix text, from a finding's facts;
//! - `evidence`: the typed evidence kinds a finding counts (labels are the report's job);
//! - `aggregation`: concluded attempts summed into findings per (cause, target, netns);
//! - `repeats`: refused attempts the kernel counted instead of sending, added to the finding
//!   of the exemplar they copy;
//! - `story`: the facts of a finding's story (who listened, what the clients may have meant);
//! - `words`: those facts told in English (listener notes, hints, durations);
//! - `timeline`: a dead listener's story, from listen to death to recovery;
//! - `output`: the types handed out (`AttemptRecord`, `Finding`, `Update`, `EngineOptions`).

mod after_connect;
mod after_words;
mod aggregation;
mod attempt;
mod buffer;
mod cause_words;
mod conclusion;
mod correlation;
mod engine;
mod evidence;
mod listeners;
mod namespaces;
mod output;
mod repeats;
pub mod rules;
mod rule_words;
mod story;
mod timeline;
mod words;
#[cfg(test)]
mod fn_tests;
#[cfg(test)]
mod after_tests;
#[cfg(test)]
mod namespace_tests;
#[cfg(test)]
mod old_kernel_tests;
#[cfg(test)]
mod repeats_tests;
#[cfg(test)]
pub(crate) mod test_kit;
#[cfg(test)]
mod tests;

pub use aggregation::{accept_wait_bucket, ACCEPT_WAIT_BUCKETS};
pub use attempt::SynOverflow;
pub use engine::Engine;
pub use evidence::{Evidence, EvidenceCounts};
pub use output::{AttemptRecord, ConnectionFacts, Death, DeathHow, EngineOptions, Finding, NginxReadTimeout, Outcome, PortsFacts, ProcessRef, RuleFacts, Update};
pub use rule_words::rule_line;
#[cfg(test)]
pub(crate) use rule_words::test_rule;
pub use rules::{is_proxy_comm, Cause, PROXY_COMMS};
pub use cause_words::unsafe_for_terminal;
pub use words::duration;
pub use timeline::{signal_name, TimelineEntry};

/// The engine's hash maps. Their keys are flows, sockets and paths, some from packets other
/// hosts sent (a dropped SYN's addresses), so the hasher is keyed at random per process and
/// built to resist collisions crafted from outside (aHash); SipHash, the standard one, spent a
/// fifth of the engine's instructions in a refused-connect flood (callgrind on
/// `flood_with_reused_sockets_and_ports_counts_every_attempt`).
pub(crate) type Map<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;
