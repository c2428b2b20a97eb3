//! The refused attempts the kernel counts instead of sending (tracer-ebpf/src/repeats.rs,
//! `tracer_common::RepeatSlot`), handed to the engine as `TcpAttemptRepeats` events.
//!
//! Each slot of each CPU counts the repeats of one exemplar at a time; a new exemplar in the
//! slot starts a new generation and carries the final count of the one it displaced. Counts
//! are never reset, only read: what the engine gets is each count's growth since the last
//! reading, so nothing is counted twice or lost between a reading and a displacement. A
//! drain reads the slots first and the ring second (`Capture::drain`): a generation a
//! reading shows was announced by an exemplar the kernel sent before it counted anything for
//! it, so that exemplar is in the ring by then.
use std::collections::{BTreeSet, HashMap};

use tracer_common::repeat_class_parts;

use crate::event::{Event, EventBody, FlowAddr, TaskInfo};

use super::REPEAT_WINDOW_NS;

/// The exemplar a slot counts for, and how much of its count the engine has.
#[derive(Clone, Debug)]
struct Class {
    generation: u32,
    sock: u64,
    netns: u32,
    flow: FlowAddr,
    sent: u32,
    /// When the exemplar closed: the kernel counts for it until `REPEAT_WINDOW_NS` later.
    exemplar_ns: u64,
    /// Read once after its window closed: its count can no longer grow.
    complete: bool,
}

/// How long after its window a class is read one last time: a close counted at the window's
/// end may come a little after the reset whose time it took.
const LAST_READING_AFTER_NS: u64 = 100_000_000;

/// The classes being counted, by (cpu, slot): at most one each, so bounded by the kernel's
/// slots.
#[derive(Default)]
pub struct RepeatClasses {
    by_slot: HashMap<(u32, u32), Class>,
}

impl RepeatClasses {
    /// A refused attempt the kernel sent as the exemplar of `class` (`ev`, decoded): the
    /// class it displaced from its slot gets its last growth (`repeats_before`, its final
    /// count), stamped with this exemplar's time (returned first), and the engine is told that
    /// `ev` is an exemplar by a count of 0 (returned second, to follow `ev`).
    pub fn exemplar(&mut self, ev: &Event, class: u64, repeats_before: u32) -> (Option<Event>, Option<Event>) {
        let EventBody::TcpAttemptFailed { flow, .. } = &ev.body else { return (None, None) };
        let (cpu, slot, generation) = repeat_class_parts(class);
        let mut displaced = None;
        if let Some(old) = self.by_slot.get(&(cpu, slot)) {
            // Generations of a slot reach the ring in order; a gap would be a class never seen.
            if old.generation.wrapping_add(1) == generation || (old.generation == u32::MAX && generation == 1) {
                displaced = growth(old, repeats_before, ev.ts_ns);
            }
        }
        let class = Class { generation, sock: ev.sock, netns: ev.netns, flow: *flow, sent: 0, exemplar_ns: ev.ts_ns, complete: false };
        let mark = repeats_event(&class, 0, ev.ts_ns);
        self.by_slot.insert((cpu, slot), class);
        (displaced, Some(mark))
    }

    /// The slot indices some class may still be counted in (to read from the kernel): a
    /// class read complete is not read again (a quiet host reads nothing).
    pub fn slots(&self) -> BTreeSet<u32> {
        self.by_slot.iter().filter(|(_, c)| !c.complete).map(|((_, slot), _)| *slot).collect()
    }

    /// One reading, at `now_ns`, of a slot on a CPU (`tally`, `last_ns` of its `RepeatSlot`):
    /// the growth of the class it counts, if the engine knows that class. A reading of a
    /// generation before the known one is stale (the exemplar that displaced it gave the final
    /// count already).
    pub fn reading(&mut self, cpu: u32, slot: u32, tally: u64, last_ns: u64, now_ns: u64, out: &mut Vec<Event>) {
        let Some(class) = self.by_slot.get_mut(&(cpu, slot)) else { return };
        if (tally >> 32) as u32 != class.generation {
            return;
        }
        out.extend(growth(class, tally as u32, last_ns));
        class.sent = class.sent.max(tally as u32);
        class.complete = class.exemplar_ns.saturating_add(REPEAT_WINDOW_NS + LAST_READING_AFTER_NS) < now_ns;
    }
}

/// The repeats counted for `class` beyond those already sent, as one event.
fn growth(class: &Class, count: u32, ts_ns: u64) -> Option<Event> {
    let n = count.checked_sub(class.sent).filter(|n| *n > 0)?;
    Some(repeats_event(class, n as u64, ts_ns))
}

fn repeats_event(class: &Class, count: u64, ts_ns: u64) -> Event {
    Event {
        ts_ns,
        netns: class.netns,
        sock: class.sock,
        task: TaskInfo::default(),
        body: EventBody::TcpAttemptRepeats { flow: class.flow, count },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::repeat_class;

    fn exemplar(sock: u64, ts_ns: u64) -> Event {
        let flow = FlowAddr { src: "127.0.0.1:40000".parse().unwrap(), dst: "127.0.0.1:9000".parse().unwrap() };
        Event {
            ts_ns,
            netns: 7,
            sock,
            task: TaskInfo { pid: 42, tid: 42, uid: 0, comm: "nginx".into() },
            body: EventBody::TcpAttemptFailed { flow, sk_err: 111, syn_retransmits: 0, rst_received: true, start_ns: ts_ns - 10 },
        }
    }

    fn counts(out: &[Event]) -> Vec<(u64, u64, u64)> {
        out.iter()
            .map(|e| match e.body {
                EventBody::TcpAttemptRepeats { count, .. } => (e.sock, count, e.ts_ns),
                _ => panic!("not a repeats event: {e:?}"),
            })
            .collect()
    }

    /// Readings send the growth of a count, once; a stale generation's reading is ignored, and
    /// the exemplar that displaces a class sends what its readings had not.
    #[test]
    fn growth_is_sent_once_and_the_displaced_class_gets_its_final_count() {
        let mut classes = RepeatClasses::default();
        let mut out = Vec::new();
        let (displaced, mark) = classes.exemplar(&exemplar(0xa, 100), repeat_class(1, 5, 1), 0);
        assert!(displaced.is_none());
        assert_eq!(counts(&[mark.expect("a mark")]), [(0xa, 0, 100)], "the exemplar is marked");
        assert_eq!(classes.slots(), [5].into_iter().collect());
        classes.reading(1, 5, 1 << 32 | 3, 150, 150, &mut out);
        classes.reading(1, 5, 1 << 32 | 3, 160, 160, &mut out);
        classes.reading(0, 5, 1 << 32 | 9, 160, 160, &mut out); // another CPU's slot: no class there
        classes.reading(1, 5, 1 << 32 | 10, 170, 170, &mut out);
        // The slot moved on to generation 2; its exemplar is not read yet: nothing.
        classes.reading(1, 5, 2 << 32 | 4, 180, 180, &mut out);
        assert_eq!(counts(&out), [(0xa, 3, 150), (0xa, 7, 170)]);
        out.clear();
        out.extend(classes.exemplar(&exemplar(0xb, 175), repeat_class(1, 5, 2), 12).0);
        assert_eq!(counts(&out), [(0xa, 2, 175)], "12 in all for the first exemplar");
        out.clear();
        classes.reading(1, 5, 1 << 32 | 12, 190, 190, &mut out); // stale
        classes.reading(1, 5, 2 << 32 | 4, 190, 190, &mut out);
        assert_eq!(counts(&out), [(0xb, 4, 190)]);
    }

    /// A class displaced before any reading: its whole count comes with the next exemplar; a
    /// displaced class with nothing counted sends nothing.
    #[test]
    fn a_class_never_read_gets_its_whole_count_from_the_next_exemplar() {
        let mut classes = RepeatClasses::default();
        let mut out = Vec::new();
        out.extend(classes.exemplar(&exemplar(0xa, 100), repeat_class(0, 1, u32::MAX), 0).0);
        out.extend(classes.exemplar(&exemplar(0xb, 200), repeat_class(0, 1, 1), 5).0);
        out.extend(classes.exemplar(&exemplar(0xc, 300), repeat_class(0, 1, 2), 0).0);
        assert_eq!(counts(&out), [(0xa, 5, 200)]);
    }

    /// A class is read until one reading after its window closed, then no more: its count
    /// can no longer grow, and a quiet host makes no reads.
    #[test]
    fn a_class_is_read_until_its_window_has_closed() {
        let mut classes = RepeatClasses::default();
        let mut out = Vec::new();
        let t0 = 1_000_000_000;
        let _ = classes.exemplar(&exemplar(0xa, t0), repeat_class(0, 3, 1), 0);
        classes.reading(0, 3, 1 << 32 | 5, t0 + 500, t0 + 500_000_000, &mut out);
        assert_eq!(classes.slots(), [3].into_iter().collect(), "inside its window");
        classes.reading(0, 3, 1 << 32 | 9, t0 + 900, t0 + REPEAT_WINDOW_NS + 2 * LAST_READING_AFTER_NS, &mut out);
        assert!(classes.slots().is_empty(), "complete");
        assert_eq!(counts(&out), [(0xa, 5, t0 + 500), (0xa, 4, t0 + 900)]);
        // Displaced later: nothing more to send for it.
        assert!(classes.exemplar(&exemplar(0xb, t0 + 5 * REPEAT_WINDOW_NS), repeat_class(0, 3, 2), 9).0.is_none());
        assert_eq!(classes.slots(), [3].into_iter().collect(), "the new class is read");
    }
}
