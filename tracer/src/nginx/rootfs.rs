//! Reading files that another process chose (an Nginx master's configuration, its error logs,
//! its binary) without trusting it.
//!
//! A container's files are reached through `/proc/PID/root`. Opening `/proc/PID/root/etc/x`
//! with plain `open()` would follow an absolute symlink inside the container
//! (`/etc/nginx/nginx.conf -> /etc/shadow`) to the *host's* file, as root. So every path is
//! resolved with `openat2(RESOLVE_IN_ROOT)` against a directory fd of that root: absolute
//! symlinks and `..` stay inside it, and magic links (`/proc/self/root`) are refused.
//!
//! Only regular files are read, opened with O_NONBLOCK so a FIFO or a device planted at a
//! config or log path can never block start-up, and only up to a size cap. When the process
//! does not run as root, a file is read only when that process could read it itself, so a
//! fake master cannot borrow tracer's privileges to read root-only files.
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

/// The root directory of a process, held open: it stays usable after that process exits
/// (an Nginx restart after a log rotation keeps the same container root).
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    /// Whose root this is, for messages.
    pub pid: u32,
    /// The credentials files are checked against; None when the owner runs as root.
    reader: Option<Credentials>,
}

/// A process's filesystem user and groups (`Uid:`/`Gid:`/`Groups:` of /proc/PID/status).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Credentials {
    /// The filesystem uid and gids of `pid`, from /proc/PID/status.
    pub fn of_pid(pid: u32) -> io::Result<Credentials> {
        let status = procfs::process::Process::new(pid as i32)
            .and_then(|p| p.status())
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut gids = vec![status.fgid];
        gids.extend(status.groups.iter().copied());
        Ok(Credentials { uid: status.fuid, gids })
    }

    /// Whether these credentials may read a file of this owner, group and mode (the classic
    /// permission bits; ACLs are not consulted, so the answer errs on refusing).
    pub fn may_read(&self, uid: u32, gid: u32, mode: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        if uid == self.uid {
            return mode & 0o400 != 0;
        }
        if self.gids.contains(&gid) {
            return mode & 0o040 != 0;
        }
        mode & 0o004 != 0
    }
}

/// Why a file could not be read: never its contents, nor its path (the caller names it).
fn refused(why: &str) -> io::Error {
    io::Error::other(why.to_string())
}

/// What a file that is not a regular file is, for the refusal.
fn not_regular(kind: std::fs::FileType) -> io::Error {
    use std::os::unix::fs::FileTypeExt;
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "something else"
    };
    refused(&format!("not a regular file ({what})"))
}

/// Upper bound of a configuration file tracer reads (Nginx configs are kilobytes).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

impl RootDir {
    /// The root of `pid` as that process sees it, checked against its credentials.
    pub fn of_pid(pid: u32) -> io::Result<RootDir> {
        let fd = nix::fcntl::open(
            format!("/proc/{pid}/root").as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        let creds = Credentials::of_pid(pid)?;
        Ok(RootDir { fd, pid, reader: (creds.uid != 0).then_some(creds) })
    }

    /// The host's own root (for paths given on tracer's command line).
    pub fn host() -> io::Result<RootDir> {
        let fd = nix::fcntl::open("/", OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())?;
        Ok(RootDir { fd, pid: 0, reader: None })
    }

    fn resolve(&self, path: &str, flags: OFlag) -> io::Result<OwnedFd> {
        // O_PATH admits only O_CLOEXEC, O_DIRECTORY and O_NOFOLLOW beside it.
        let extra = if flags.contains(OFlag::O_PATH) { OFlag::O_CLOEXEC } else { OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK };
        let how = OpenHow::new()
            .flags(flags | extra)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
        // Relative to the root: RESOLVE_IN_ROOT treats a leading '/' as that root anyway.
        Ok(openat2(self.fd.as_fd(), OsStr::from_bytes(path.as_bytes()), how)?)
    }

    /// Opens a regular file inside this root for reading. Anything else (a FIFO, a device,
    /// a directory, a socket) is refused without blocking.
    pub fn open_regular(&self, path: &str) -> io::Result<File> {
        // First a handle that opens nothing (O_PATH): a device's open() can act on the
        // device, a FIFO's would wait for a writer. Only a regular file is then opened for
        // reading, through that very handle, so what was checked is what gets read.
        // The reopen goes through the handle, so this is the inode that gets read: its type
        // and permissions need no second look.
        let handle = File::from(self.resolve(path, OFlag::O_PATH)?);
        let meta = handle.metadata()?;
        if !meta.file_type().is_file() {
            return Err(not_regular(meta.file_type()));
        }
        if let Some(reader) = &self.reader {
            if !reader.may_read(meta.uid(), meta.gid(), meta.mode()) {
                return Err(refused("the process that names it could not read it itself"));
            }
        }
        Ok(File::from(nix::fcntl::open(
            format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        )?))
    }

    /// A whole regular file as text, when it is at most `cap` bytes.
    pub fn read_to_string(&self, path: &str, cap: u64) -> io::Result<String> {
        let file = self.open_regular(path)?;
        let mut buf = Vec::new();
        file.take(cap + 1).read_to_end(&mut buf)?;
        if buf.len() as u64 > cap {
            return Err(refused(&format!("larger than {cap} bytes")));
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// (device, inode) of this root directory: two masters of one container share it.
    pub fn id(&self) -> Option<(u64, u64)> {
        let st = nix::sys::stat::fstat(self.fd.as_fd()).ok()?;
        Some((st.st_dev as u64, st.st_ino as u64))
    }

    /// The names in a directory inside this root.
    pub fn list_dir(&self, dir: &str) -> io::Result<Vec<String>> {
        let fd = self.resolve(dir, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut d = nix::dir::Dir::from_fd(fd)?;
        let mut names = Vec::new();
        for entry in d.iter().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        Ok(names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A scratch directory standing for a container's root (removed on drop).
    struct Scratch(std::path::PathBuf);
    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("tracer-rootfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(p.join("etc/nginx")).unwrap();
            Scratch(p)
        }
        fn root(&self) -> RootDir {
            let fd = nix::fcntl::open(&self.0, OFlag::O_PATH | OFlag::O_DIRECTORY, nix::sys::stat::Mode::empty()).unwrap();
            RootDir { fd, pid: 0, reader: None }
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let s = Scratch::new("symlink");
        // Outside the scratch root, a "host" file the container must not reach.
        let host_secret = s.0.with_extension("secret");
        std::fs::write(&host_secret, "host secret").unwrap();
        std::fs::write(s.0.join("etc/nginx/real.conf"), "events {}").unwrap();
        symlink(&host_secret, s.0.join("etc/nginx/escape.conf")).unwrap();
        symlink("/etc/nginx/real.conf", s.0.join("etc/nginx/inside.conf")).unwrap();
        symlink("../../../../../../../../etc/passwd", s.0.join("etc/nginx/dotdot.conf")).unwrap();
        let root = s.root();
        assert_eq!(root.read_to_string("/etc/nginx/inside.conf", 100).unwrap(), "events {}");
        // The absolute link resolves inside the root, where nothing is: not the host file.
        let err = root.read_to_string("/etc/nginx/escape.conf", 100).unwrap_err();
        assert!(!err.to_string().contains("host secret"), "{err}");
        // `..` stops at the root: /etc/passwd of the scratch root, which does not exist.
        assert!(root.read_to_string("/etc/nginx/dotdot.conf", 1 << 20).is_err());
        let _ = std::fs::remove_file(host_secret);
    }

    #[test]
    fn fifos_directories_and_huge_files_are_refused_without_blocking() {
        let s = Scratch::new("fifo");
        nix::unistd::mkfifo(&s.0.join("etc/nginx/fifo.conf"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        std::fs::write(s.0.join("etc/nginx/big.conf"), vec![b'#'; 200]).unwrap();
        let root = s.root();
        let err = root.open_regular("/etc/nginx/fifo.conf").unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        assert!(root.open_regular("/etc/nginx").unwrap_err().to_string().contains("not a regular file"));
        assert!(root.read_to_string("/etc/nginx/big.conf", 100).unwrap_err().to_string().contains("larger than"));
        assert_eq!(root.list_dir("/etc/nginx").unwrap().len(), 2);
    }

    #[test]
    fn an_unprivileged_owner_reads_only_what_it_could_read() {
        let nobody = Credentials { uid: 65534, gids: vec![65534] };
        assert!(!nobody.may_read(0, 42, 0o640), "shadow-like file");
        assert!(nobody.may_read(0, 0, 0o644));
        assert!(nobody.may_read(65534, 65534, 0o600));
        assert!(!nobody.may_read(65534, 0, 0o044), "owner bits decide for the owner");
        assert!(nobody.may_read(0, 65534, 0o040));
        assert!(Credentials { uid: 0, gids: vec![] }.may_read(0, 0, 0));
    }
}
