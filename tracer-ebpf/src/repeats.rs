//! Refused attempts counted per CPU instead of sent (`tracer_common::RepeatSlot`).
//!
//! A flood of refused connects is one owner hitting one dead target over and over. Sending
//! each attempt costs a ring event (about 145 ns here) and userspace's decoding of it, which
//! competes with the flood: the first attempt of a kind goes out in full, as the exemplar of
//! its class, and the identical ones after it on the same CPU are only counted, for
//! `Config.repeat_window_ns`. Userspace reads the counts (capture/repeats.rs). Only attempts
//! whose refusal this host's stack proved (its reset from no socket, claimed by the close)
//! are counted: everything that decides their verdict is in the key.
use aya_ebpf::{helpers::bpf_get_smp_processor_id, macros::map, maps::PerCpuArray};
use tracer_common::{repeat_class, Config, Flow, RepeatSlot, Task, REPEAT_KEY_WORDS, REPEAT_SLOTS};

/// Per CPU, the slots of the classes being counted.
#[map]
pub static REPEATS: PerCpuArray<RepeatSlot> = PerCpuArray::with_max_entries(REPEAT_SLOTS, 0);

/// What makes two refused attempts the same finding: namespace, target, owner (ids, uid,
/// name), SYN retransmits, and the reason of the reset that refused them (their socket error
/// is always ECONNREFUSED: a reset in SYN_SENT sets it). Its words are made as they are used
/// (a key on the stack would not fit beside the rest).
pub struct Refusal<'a> {
    pub netns: u32,
    pub flow: &'a Flow,
    pub owner: &'a Task,
    pub syn_retransmits: u32,
    pub reset_reason: u32,
}

impl Refusal<'_> {
    #[inline(always)]
    fn word(&self, i: usize) -> u64 {
        // SAFETY: `Flow` is 40 bytes aligned to 8 and `Task` 32; every bit pattern is a valid u64.
        let (f, t) = unsafe { (&*(self.flow as *const Flow as *const [u64; 5]), &*(self.owner as *const Task as *const [u64; 4])) };
        match i {
            0 => (self.netns as u64) << 32 | (self.flow.family as u64) << 16 | self.flow.dport as u64,
            1 => f[3],
            2 => f[4],
            3 => t[0],
            // The uid, and the SYN retransmits where the task's padding is.
            4 => t[1] ^ (self.syn_retransmits as u64) << 32,
            5 => t[2],
            6 => t[3],
            _ => self.reset_reason as u64,
        }
    }

    /// The slot: from the target and the owner's ids, which tell floods apart.
    #[inline(always)]
    fn slot(&self) -> u32 {
        let h = self.word(0) ^ self.word(1) ^ self.word(2) ^ self.word(3);
        (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - REPEAT_SLOTS.trailing_zeros())) as u32
    }

    /// Whether `key` is this refusal's: one OR of differences (a chain of `==` becomes a
    /// memcmp call).
    #[inline(always)]
    fn is(&self, key: &[u64; REPEAT_KEY_WORDS]) -> bool {
        let mut d = 0u64;
        let mut i = 0;
        while i < REPEAT_KEY_WORDS {
            d |= key[i] ^ self.word(i);
            i += 1;
        }
        d == 0
    }

    #[inline(always)]
    fn write_to(&self, key: &mut [u64; REPEAT_KEY_WORDS]) {
        let mut i = 0;
        while i < REPEAT_KEY_WORDS {
            key[i] = self.word(i);
            i += 1;
        }
    }
}

/// What to do with a refused attempt: nothing more (counted), or send it in full, as the
/// exemplar of `class` (0: alone) with the final count of the class it displaces.
pub enum Next {
    Counted,
    Send { slot: *mut RepeatSlot, class: u64, repeats_before: u32 },
}

/// Counts `refusal` as a repeat of its slot's exemplar when the slot holds one sent within
/// the window. Otherwise it is to be sent, and `sent` must follow the send. A run that
/// interrupted another one's use of the slot sends its attempt alone.
#[inline(always)]
pub fn count(cfg: &Config, refusal: &Refusal, now: u64) -> Next {
    let index = refusal.slot();
    let alone = Next::Send { slot: core::ptr::null_mut(), class: 0, repeats_before: 0 };
    let Some(slot) = REPEATS.get_ptr_mut(index) else { return alone };
    let s = unsafe { &mut *slot };
    if unsafe { core::ptr::read_volatile(&s.busy) } != 0 {
        return alone;
    }
    unsafe { core::ptr::write_volatile(&mut s.busy, 1) };
    let tally = s.tally;
    let generation = (tally >> 32) as u32;
    let repeats = tally as u32;
    if generation != 0 && repeats != u32::MAX && now.wrapping_sub(s.exemplar_ns) < cfg.repeat_window_ns && refusal.is(&s.key) {
        s.last_ns = now;
        // One store of the whole word: userspace reads it as it changes.
        unsafe { core::ptr::write_volatile(&mut s.tally, tally + 1) };
        unsafe { core::ptr::write_volatile(&mut s.busy, 0) };
        return Next::Counted;
    }
    let next = if generation == u32::MAX { 1 } else { generation + 1 };
    let cpu = unsafe { bpf_get_smp_processor_id() };
    Next::Send { slot, class: repeat_class(cpu, index, next), repeats_before: repeats }
}

/// After `count` said to send: the slot takes `refusal` as its new exemplar if the ring took
/// it (`sent`), and is let go.
#[inline(always)]
pub fn sent(slot: *mut RepeatSlot, class: u64, refusal: &Refusal, now: u64, sent: bool) {
    if slot.is_null() {
        return;
    }
    let s = unsafe { &mut *slot };
    if sent {
        refusal.write_to(&mut s.key);
        s.exemplar_ns = now;
        s.last_ns = now;
        unsafe { core::ptr::write_volatile(&mut s.tally, (class as u32 as u64) << 32) };
    }
    unsafe { core::ptr::write_volatile(&mut s.busy, 0) };
}
