//! Reading a network namespace's netfilter ruleset: the system's own `nft` (and, for
//! iptables-nft tables, `iptables-nft-save`) run inside that namespace, and the ruleset's
//! generation (nfnetlink NFT_MSG_GETGEN) so a ruleset is read again only when it changed.
//!
//! Only programs root alone could have put there run: a fixed absolute path whose every
//! directory and the file itself (symlinks resolved) are root's and writable by no one else.
//! Never a binary from another process's root or from PATH. The environment is emptied, the
//! output bounded and the program killed when it takes too long.

use std::io::{self, Read};
use std::os::fd::BorrowedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::rawnl::{self, NlSocket, NLM_F_REQUEST};

/// The system's nft (Debian's nftables package).
pub const NFT: &str = "/usr/sbin/nft";
/// iptables-nft's dump of its tables (Debian's iptables package), per family.
pub const IPTABLES_NFT_SAVE: &str = "/usr/sbin/iptables-nft-save";
pub const IP6TABLES_NFT_SAVE: &str = "/usr/sbin/ip6tables-nft-save";
/// A listing of even a large ruleset takes well under a second.
const RUN_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on a listing's size.
const MAX_OUTPUT: u64 = 64 * 1024 * 1024;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

/// Whether nf_tables is in the kernel without anything to load: its module is loaded, or
/// the kernel takes no modules (then it is built in or absent, and asking loads nothing).
/// Asking otherwise would make the kernel load it: tracer must not change the firewall.
pub fn nf_tables_present() -> bool {
    Path::new("/sys/module/nf_tables").exists() || !Path::new("/proc/modules").exists()
}

/// Whether `path` is a program only root could have put there: after its symlinks, a regular
/// executable file owned by root and writable by no one else, in directories owned by root
/// and writable by no one else, all the way up.
pub fn trusted_program(path: &str) -> bool {
    let Ok(real) = std::fs::canonicalize(path) else { return false };
    let root_only = |p: &Path, dir: bool| {
        std::fs::symlink_metadata(p).is_ok_and(|m| {
            m.uid() == 0 && m.mode() & 0o022 == 0 && if dir { m.is_dir() } else { m.is_file() && m.mode() & 0o111 != 0 }
        })
    };
    root_only(&real, false) && real.ancestors().skip(1).all(|d| root_only(d, true))
}

/// The standard output of `program args` run inside namespace `netns` (None: tracer's own):
/// a short-lived thread enters the namespace (setns affects only the calling thread, and a
/// child starts in its parent thread's namespaces) and runs it with an empty environment,
/// no input, the output bounded, killed after `RUN_TIMEOUT`.
pub fn run_in_netns(netns: Option<BorrowedFd<'_>>, program: &str, args: &[&str]) -> io::Result<String> {
    if !trusted_program(program) {
        return Err(io::Error::other(format!("{program} is not a root-owned program only root can change")));
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Some(fd) = netns {
                    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
                }
                run_bounded(program, args)
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("ruleset reader thread panicked")))
    })
}

fn run_bounded(program: &str, args: &[&str]) -> io::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout"))?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        stdout.take(MAX_OUTPUT).read_to_end(&mut out).map(|_| out)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if started.elapsed() >= RUN_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("{program} took longer than {RUN_TIMEOUT:?}")));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().map_err(|_| io::Error::other("output reader panicked"))??;
    if !status.success() {
        return Err(io::Error::other(format!("{program} {}: {status}", args.join(" "))));
    }
    String::from_utf8(out).map_err(|_| io::Error::other(format!("{program}: output is not UTF-8")))
}

/// The ruleset generation of the socket's namespace: it changes with every ruleset change.
pub fn generation(socket: &mut NlSocket) -> io::Result<u32> {
    // struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
    let request = [0u8, 0, 0, 0];
    let msg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
    let reply_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN;
    let replies = socket.request(msg_type, NLM_F_REQUEST, &request, reply_type)?;
    replies
        .iter()
        .find_map(|r| generation_of(r))
        .ok_or_else(|| io::Error::other("NFT_MSG_NEWGEN without a generation"))
}

/// NFTA_GEN_ID (big-endian u32) of a NEWGEN payload (nfgenmsg, then attributes).
fn generation_of(payload: &[u8]) -> Option<u32> {
    let v = rawnl::attribute(payload.get(4..)?, NFTA_GEN_ID)?;
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_owned_programs_are_trusted() {
        assert!(!trusted_program("/nonexistent/nft"));
        assert!(!trusted_program("/tmp"), "a directory is no program");
        let dir = std::env::temp_dir().join(format!("tracer-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nft");
        std::fs::write(&fake, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        // /tmp is writable by everyone: nothing under it is trusted, whoever owns the file.
        assert!(!trusted_program(fake.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
        if Path::new(NFT).exists() && std::fs::metadata(NFT).is_ok_and(|m| m.uid() == 0) {
            assert!(trusted_program(NFT));
        }
    }

    #[test]
    fn generation_attribute_is_read_big_endian_and_odd_payloads_give_none() {
        let mut payload = vec![0u8, 0, 0, 0];
        rawnl::push_attribute(&mut payload, NFTA_GEN_ID, &7u32.to_be_bytes());
        assert_eq!(generation_of(&payload), Some(7));
        assert_eq!(generation_of(&payload[..4]), None);
        assert_eq!(generation_of(&[1, 2]), None);
    }

    #[test]
    fn a_program_that_hangs_is_killed_and_one_that_fails_is_an_error() {
        if !trusted_program("/bin/sleep") || !trusted_program("/bin/false") {
            println!("skipped: /bin/sleep or /bin/false is not root's");
            return;
        }
        let e = run_bounded("/bin/sleep", &["30"]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(run_bounded("/bin/false", &[]).is_err());
        assert_eq!(run_in_netns(None, "/bin/echo", &["hi"]).unwrap(), "hi\n");
    }
}
