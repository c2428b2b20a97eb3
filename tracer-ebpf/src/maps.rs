//! The maps shared by the probes. Per-socket state other than the attempt records
//! (attempts.rs) lives in LRU maps, so that sockets that never finish connecting (or listeners
//! that vanish unseen) can never exhaust them.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, LruHashMap, LruPerCpuHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use tracer_common::{
    AcceptWaitKey, Config, ListenerKey, ListenerState, QueuedChild, SignalMemo, StashedReset, ACCEPT_WAIT_SLOTS, COUNTER_SLOTS,
    LOST_BASE, UNIX_PATH_MAX,
};

/// One slot: the running kernel's facts, written by userspace before any attach.
#[map]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Events for userspace. Userspace may resize it before load.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// TCP listeners seen entering LISTEN while tracing, keyed by (netns, port, family).
#[map]
pub static LISTENERS: LruHashMap<ListenerKey, ListenerState> = LruHashMap::with_max_entries(65_536, 0);

/// AF_UNIX connect() arguments between sys_enter and sys_exit, keyed by pid_tgid:
/// (user address of the sockaddr, its length).
#[map]
pub static UNIX_CONNECTS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(65_536, 0);

/// The reset from no socket each CPU last sent, until its attempt claims it (probes/send_reset.rs).
#[map]
pub static STASHED_RESETS: PerCpuArray<StashedReset> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU counters: events emitted per kind, then events lost per kind (ring buffer full).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

// ---- the function hooks (probes/fhooks.rs) ----

/// Children that reached ESTABLISHED on a listener's accept queue (recorded by set_state while
/// `FN_ACCEPT` is active), keyed by the child's `struct sock *`, until accept() takes them.
#[map]
pub static QUEUED: LruHashMap<u64, QueuedChild> = LruHashMap::with_max_entries(65_536, 0);

/// Accept-queue wait histograms per listener address (per-CPU: counted without atomics).
#[map]
pub static ACCEPT_WAITS: LruPerCpuHashMap<AcceptWaitKey, [u64; ACCEPT_WAIT_SLOTS]> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// kprobe variants: arguments saved at entry for the kretprobe, keyed by pid_tgid (tagged per
/// function).
#[map]
pub static FN_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(16_384, 0);

// ---- the listener lifecycle (probes/lifecycle.rs) ----

/// Listener owners (tgid -> 1).
#[map]
pub static WATCHED_PIDS: LruHashMap<u32, u32> = LruHashMap::with_max_entries(16_384, 0);

/// Slot 0: `tracer_conn_end` (probes/conn_end.rs), tail-called by set_state when an
/// established connection ends; userspace fills it after loading that program.
#[map]
pub static CONN_END: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// The last fatal signal generated for each process (by tgid), from any sender, and the OOM
/// killer's choices: read when a dying process's sockets close (probes/conn_end.rs).
#[map]
pub static SIGNALS: LruHashMap<u32, SignalMemo> = LruHashMap::with_max_entries(8_192, 0);

/// Unix socket paths of listeners, NUL-padded to 108 bytes -> 1.
#[map]
pub static WATCHED_PATHS: LruHashMap<[u8; UNIX_PATH_MAX], u32> = LruHashMap::with_max_entries(4_096, 0);

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

/// Adds `delta` (wrapping: u64::MAX subtracts one) to this CPU's counter `slot`; returns the
/// CPU's new count (0 without the map).
#[inline(always)]
pub fn count(slot: u32, delta: u64) -> u64 {
    match COUNTERS.get_ptr_mut(slot) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU here.
        Some(c) => unsafe {
            *c = (*c).wrapping_add(delta);
            *c
        },
        None => 0,
    }
}

/// Counts one in a per-CPU counter slot; returns the CPU's new count.
#[inline(always)]
pub fn bump(slot: u32) -> u64 {
    count(slot, 1)
}

/// Unread bytes in the ring past which a submit wakes the reader at once. Below it no submit
/// wakes anyone: userspace drains the ring on its own short timer (capture::DRAIN_EVERY), so
/// a flood costs one wake-up per batch instead of one per event (a wake-up is an irq_work
/// plus a cross-CPU task wake, several times the cost of the event itself).
const WAKEUP_BYTES: u64 = 512 * 1024;

/// The ring's fill level is looked at once per this many events of a kind on a CPU. A look
/// costs a cache miss: the query reads the consumer's position, a line the reader's CPU writes
/// as it drains (`cargo xtask bench`: 2456 -> 1719 BPF ns per refused attempt when most
/// events skip it). Between looks at most 31 events of a kind per CPU (6 KiB) go unchecked,
/// against a threshold of 512 KiB.
const WAKEUP_LOOK_EVERY: u64 = 32;

/// `emitted`: this CPU's count of events of this kind, this one included.
#[inline(always)]
fn wakeup_flags(emitted: u64) -> u64 {
    if emitted % WAKEUP_LOOK_EVERY == 0 && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Zeroes a record in 8-byte stores the compiler unrolls (record sizes are multiples of 8). A
/// `write_bytes` becomes a byte loop in a memset subprogram, which the verifier walks once
/// per byte for every path that reaches it: on 6.1 that alone passed its 1M-instruction limit.
#[inline(always)]
unsafe fn zero<T>(p: *mut T) {
    let words = core::mem::size_of::<T>() / 8;
    let p = p as *mut u64;
    let mut i = 0;
    while i < words {
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
        i += 1;
    }
}

/// Reserves a zeroed event of kind `kind` directly in the ring buffer (events are too large
/// to build on the 512-byte BPF stack next to everything else), lets `fill` write it, and
/// submits it. A full ring buffer is counted as a lost event of that kind. Whether it was sent.
#[inline(always)]
pub fn emit_with<T: 'static + Default>(kind: u32, fill: impl FnOnce(&mut T)) -> bool {
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            let event = unsafe {
                let p = entry.as_mut_ptr();
                zero(p);
                &mut *p
            };
            fill(event);
            entry.submit(wakeup_flags(bump(kind)));
            true
        }
        None => {
            bump(LOST_BASE + kind);
            false
        }
    }
}
