//! Text and JSON-lines rendering of attempts and findings. Render only: no I/O besides writing
//! to the `Write` it is given.

pub mod evidence;
pub mod json;
pub mod text;
#[cfg(test)]
mod engine_tests;
/// Test fixtures shared by the renderers' tests.
#[cfg(test)]
pub(crate) mod fixtures {
    use crate::event::{Target, TaskInfo};
    use crate::explain::{AttemptRecord, Cause, Evidence, Outcome};

    /// An Nginx worker's connect() to a Unix path that does not exist.
    pub fn unix_missing_attempt() -> AttemptRecord {
        AttemptRecord {
            ts_ns: 2_500_000_000,
            start_ns: 2_400_000_000,
            cause: Cause::UnixMissing,
            target: Target::Unix("/run/gunicorn.sock".into()),
            netns: 1,
            sock: 0xffff_8880_0000_1000,
            client: TaskInfo { pid: 812, tid: 812, uid: 33, comm: "nginx".into() },
            evidence: [(Evidence::ConnectErrno(2), 1)].into_iter().collect(),
            outcome: Outcome::Failed,
            errno: 2,
            count: 1,
        }
    }
}


use chrono::{DateTime, SecondsFormat, Utc};

use crate::event::KindCounts;

/// Converts CLOCK_MONOTONIC nanoseconds (event timestamps) to wall-clock time:
/// wall_ns = mono_ns + boot_offset_ns. main.rs measures the offset once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub boot_offset_ns: i128,
}

impl Clock {
    /// A clock with a given offset (tests, replays).
    pub fn fixed(boot_offset_ns: i128) -> Clock {
        Clock { boot_offset_ns }
    }

    pub fn wall(self, mono_ns: u64) -> DateTime<Utc> {
        let wall = (mono_ns as i128 + self.boot_offset_ns).clamp(0, i64::MAX as i128) as i64;
        DateTime::from_timestamp_nanos(wall)
    }

    /// `2024-05-01T10:01:02.123Z` (UTC, milliseconds).
    pub fn to_rfc3339(self, mono_ns: u64) -> String {
        self.wall(mono_ns).to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// `10:01:02` (UTC), for text.
    pub fn to_hms(self, mono_ns: u64) -> String {
        self.wall(mono_ns).format("%H:%M:%S").to_string()
    }

    /// `10:01:02.123` (UTC), for one-line attempt reports.
    pub fn to_hms_millis(self, mono_ns: u64) -> String {
        self.wall(mono_ns).format("%H:%M:%S%.3f").to_string()
    }
}

/// What a run looked like, for the closing summary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub duration_s: f64,
    /// Events decoded.
    pub events: u64,
    /// Events the kernel could not deliver, by kind.
    pub lost_events: KindCounts,
    /// Hooks attached, e.g. "tracepoint/sock/inet_sock_set_state".
    pub hooks: Vec<String>,
    /// Number of findings reported.
    pub findings: u64,
}

impl Summary {
    pub fn lost_total(&self) -> u64 {
        self.lost_events.values().sum()
    }
}
