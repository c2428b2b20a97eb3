//! Stop signals: SIGINT, SIGTERM and SIGHUP end a trace in its report (exit 0), from the
//! first instant of start-up.

use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::{Context, Result};

/// The signal (SIGINT, SIGTERM or SIGHUP) that asked tracer to stop, 0 while none has.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_stop_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
}

/// Makes SIGINT, SIGTERM and SIGHUP (an ssh session dropping) ask for the orderly end instead
/// of killing tracer, from the first instant of a trace: a signal during start-up (probing,
/// attaching, reading Nginx's files) is remembered and honoured once start-up is done.
/// tokio's handlers, added later for the main loop, chain to this one (signal-hook-registry
/// calls the previous handler), so the flag stays right. No signal is ever blocked.
pub fn install_stop_handlers() -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(SigHandler::Handler(note_stop_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("installing the {signal} handler"))?;
    }
    Ok(())
}

pub fn stop_requested() -> bool {
    STOP_SIGNAL.load(Ordering::SeqCst) != 0
}

/// The stop signal that arrived before the trace began, if one did.
pub fn stopped_by() -> Option<nix::sys::signal::Signal> {
    nix::sys::signal::Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_signal_is_noted_not_fatal() {
        install_stop_handlers().unwrap();
        assert!(!stop_requested());
        // SIGHUP's default action would end this test process.
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
        assert!(stop_requested());
        assert_eq!(STOP_SIGNAL.load(Ordering::SeqCst), libc::SIGHUP);
        STOP_SIGNAL.store(0, Ordering::SeqCst);
    }

}
