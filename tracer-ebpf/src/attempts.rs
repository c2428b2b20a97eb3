//! The attempt records: who connected each TCP socket tracer follows, from connect until the
//! attempt fails or its connection ends (set_state.rs, conn_end.rs).
//!
//! A set-associative table in two arrays instead of a hash map. Every upstream connection
//! inserts one record and removes it, and a BPF hash map takes a bucket spinlock with
//! interrupts off and a free-list lock for each insert and each delete: perf on a healthy
//! connect loop put about half of `inet_sock_set_state`'s time in them. Array lookups are
//! inlined by the verifier and take no lock.
//!
//! A socket's set is a keyed hash of its address (`attempt_set`); a set holds `ATTEMPT_WAYS`
//! sockets. The tags (the sockets' addresses) of a set are 64 contiguous bytes, so finding a
//! socket reads one or two cache lines, not one per way.
//! With no lock, two connects on two CPUs may pick the same free way in the same instant:
//! each record carries a check word over its fixed fields and the socket's address
//! (`AttemptState::check_for`), so a record mixed from two writers is never taken for either
//! (it is counted as lost, like a full set).
use aya_ebpf::{macros::map, maps::Array};
use tracer_common::{
    attempt_set, AttemptState, Config, EventKind, Task, ATTEMPT_RECORDS, ATTEMPT_RECORDS_HELD, ATTEMPT_SETS, ATTEMPT_WAYS, LOST_BASE,
};

use crate::maps::{bump, count};

/// Per set, the `struct sock *` of each way (0: free).
#[map]
pub static ATTEMPT_TAGS: Array<[u64; ATTEMPT_WAYS]> = Array::with_max_entries(ATTEMPT_SETS, 0);

/// Per set and way (index set * WAYS + way), the attempt's record.
#[map]
pub static ATTEMPTS: Array<AttemptState> = Array::with_max_entries(ATTEMPT_RECORDS, 0);

/// Records an attempt's owner and start. A socket that already has a way (its address reused
/// after a record was missed) keeps it; otherwise the first free way. When the set is full the
/// attempt cannot be followed: counted as a lost attempt-failure event, so the summary says
/// events were lost.
#[inline(always)]
pub fn track(cfg: &Config, sk: u64, owner: Task, start_ns: u64) {
    let set = attempt_set(cfg.attempt_seed, sk);
    let Some(tags) = ATTEMPT_TAGS.get_ptr_mut(set) else { return };
    let tags = unsafe { &mut *tags };
    let mut way = ATTEMPT_WAYS;
    let mut i = 0;
    while i < ATTEMPT_WAYS {
        if tags[i] == sk {
            way = i;
            break;
        }
        if tags[i] == 0 && way == ATTEMPT_WAYS {
            way = i;
        }
        i += 1;
    }
    if way == ATTEMPT_WAYS {
        bump(LOST_BASE + EventKind::TcpAttemptFailed as u32);
        return;
    }
    let Some(record) = ATTEMPTS.get_ptr_mut(set * ATTEMPT_WAYS as u32 + way as u32) else { return };
    // Field by field, the zeroes volatile: the compiler turns neighbouring zero stores into a
    // call of a byte-loop memset subprogram, on every connect.
    unsafe {
        (*record).owner = owner;
        (*record).start_ns = start_ns;
        core::ptr::write_volatile(&mut (*record).syn_retransmits, 0);
        core::ptr::write_volatile(&mut (*record).rst_received, 0);
        core::ptr::write_volatile(&mut (*record).established_ns, 0);
        (*record).check = (*record).check_for(sk);
    }
    if tags[way] != sk {
        tags[way] = sk;
        count(ATTEMPT_RECORDS_HELD, 1);
    }
}

/// The record of `sk`, if tracer follows it. The pointer stays valid (array memory); the
/// record is the socket's until `forget`.
#[inline(always)]
pub fn find(cfg: &Config, sk: u64) -> Option<*mut AttemptState> {
    let (_, record) = find_way(cfg, sk)?;
    Some(record)
}

/// Lets the record of `sk` go, if it has one.
#[inline(always)]
pub fn forget(cfg: &Config, sk: u64) {
    if let Some((tag, _)) = find_way(cfg, sk) {
        release(tag);
    }
}

/// Lets go the record whose tag `find_way` returned (a second search saved where the record
/// was just read).
#[inline(always)]
pub fn release(tag: *mut u64) {
    unsafe { *tag = 0 };
    count(ATTEMPT_RECORDS_HELD, u64::MAX);
}

/// (the tag, the record) of `sk`'s way. A tag that matches over a record that does not (two
/// writers in one way at once) is let go and counted as a lost attempt.
#[inline(always)]
pub fn find_way(cfg: &Config, sk: u64) -> Option<(*mut u64, *mut AttemptState)> {
    if sk == 0 {
        return None;
    }
    let set = attempt_set(cfg.attempt_seed, sk);
    let tags = unsafe { &mut *ATTEMPT_TAGS.get_ptr_mut(set)? };
    let mut i = 0;
    while i < ATTEMPT_WAYS {
        if tags[i] == sk {
            let record = ATTEMPTS.get_ptr_mut(set * ATTEMPT_WAYS as u32 + i as u32)?;
            if unsafe { (*record).check != (*record).check_for(sk) } {
                tags[i] = 0;
                count(ATTEMPT_RECORDS_HELD, u64::MAX);
                bump(LOST_BASE + EventKind::TcpAttemptFailed as u32);
                return None;
            }
            return Some((&mut tags[i] as *mut u64, record));
        }
        i += 1;
    }
    None
}
