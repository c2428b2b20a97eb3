//! stdout that notes when its reader has gone (`| head -1`), so that tracer can end quietly.

use std::io::{BufWriter, StdoutLock, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once writing to stdout failed because nobody reads it any more (EPIPE: `| head -1`
/// exited; EIO: the terminal hung up).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::SeqCst)
}

/// stdout, noting when its reader has gone so that the exit can be quiet instead of an error.
/// Buffered until each flush (the trace loop flushes once per tick, and at the end): Rust's
/// stdout writes every line with a syscall of its own, one per failed attempt in a refused
/// flood, where a tick's lines fit in a few.
pub struct Stdout<'a>(BufWriter<StdoutLock<'a>>);

impl Stdout<'_> {
    pub fn lock() -> Stdout<'static> {
        Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout().lock()))
    }

    fn note(result: std::io::Result<usize>) -> std::io::Result<usize> {
        if let Err(e) = &result {
            if e.kind() == std::io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO) {
                STDOUT_GONE.store(true, Ordering::SeqCst);
            }
        }
        result
    }
}

impl Write for Stdout<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Stdout::note(self.0.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Stdout::note(self.0.flush().map(|()| 0)).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_notes_a_reader_that_went_away() {
        assert!(Stdout::note(Ok(3)).is_ok());
        assert!(!stdout_gone());
        let _ = Stdout::note(Err(std::io::Error::from_raw_os_error(libc::EAGAIN)));
        assert!(!stdout_gone(), "only EPIPE and EIO mean the reader is gone");
        let _ = Stdout::note(Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe)));
        assert!(stdout_gone());
        STDOUT_GONE.store(false, Ordering::SeqCst);
    }
}
