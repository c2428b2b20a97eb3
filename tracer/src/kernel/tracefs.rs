//! tracefs: where it is, mounting it when absent, and the format files that say where each
//! field of a classic tracepoint record lies on this kernel.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};

/// Where tracefs is mounted when nothing else has mounted it (the modern, debugfs-free place).
pub const DEFAULT_TRACEFS: &str = "/sys/kernel/tracing";
/// Older systems reach tracefs through debugfs (automounted there).
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// How `locate_or_mount_tracefs` found tracefs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TracefsMount {
    pub path: PathBuf,
    /// True when tracefs was not mounted and this process mounted it.
    pub mounted_now: bool,
}

/// A mounted tracefs, mounting it at /sys/kernel/tracing when none is.
pub fn ensure_tracefs() -> anyhow::Result<PathBuf> {
    Ok(locate_or_mount_tracefs()?.path)
}

/// Like `ensure_tracefs`, also saying whether this call had to mount it (doctor reports that).
pub fn locate_or_mount_tracefs() -> anyhow::Result<TracefsMount> {
    if let Some(path) = find_tracefs() {
        return Ok(TracefsMount { path, mounted_now: false });
    }
    match mount_tracefs(Path::new(DEFAULT_TRACEFS)) {
        Ok(()) if has_events(Path::new(DEFAULT_TRACEFS)) => {
            Ok(TracefsMount { path: PathBuf::from(DEFAULT_TRACEFS), mounted_now: true })
        }
        Ok(()) => Err(anyhow!(
            "tracefs is not mounted and could not be mounted (mounted at {DEFAULT_TRACEFS} but it has no events/ directory): run `mount -t tracefs nodev {DEFAULT_TRACEFS}`"
        )),
        Err(e) => Err(anyhow!(
            "tracefs is not mounted and could not be mounted ({e}): run `mount -t tracefs nodev {DEFAULT_TRACEFS}`"
        )),
    }
}

/// A mounted tracefs, without mounting anything: a `tracefs` entry of /proc/mounts whose
/// events/ directory exists, else the debugfs path when it works.
pub fn find_tracefs() -> Option<PathBuf> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut candidates = tracefs_mount_points(&mounts);
    candidates.push(PathBuf::from(DEBUGFS_TRACING));
    candidates.into_iter().find(|p| has_events(p))
}

/// Mount points of type tracefs in a /proc/mounts text, /sys/kernel/tracing first.
fn tracefs_mount_points(proc_mounts: &str) -> Vec<PathBuf> {
    let mut points: Vec<PathBuf> = proc_mounts
        .lines()
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let _source = cols.next()?;
            let point = cols.next()?;
            let fstype = cols.next()?;
            (fstype == "tracefs").then(|| PathBuf::from(unescape_mount_path(point)))
        })
        .collect();
    points.sort_by_key(|p| p != Path::new(DEFAULT_TRACEFS));
    points
}

/// /proc/mounts escapes spaces, tabs, newlines and backslashes as octal (`\040`).
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|b| (b'0'..=b'7').contains(b)) {
                let value = digits.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                if let Ok(v) = u8::try_from(value) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn has_events(tracefs: &Path) -> bool {
    tracefs.join("events").is_dir()
}

fn mount_tracefs(target: &Path) -> anyhow::Result<()> {
    // nix's mount() needs a feature the workspace does not enable; the libc call is the same.
    let c_target = CString::new(target.as_os_str().as_encoded_bytes()).context("mount point")?;
    let source = CString::new("nodev").expect("static string");
    let fstype = CString::new("tracefs").expect("static string");
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call; data NULL.
    let rc = unsafe { libc::mount(source.as_ptr(), c_target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        bail!("mount -t tracefs nodev {}: {err}", target.display());
    }
    Ok(())
}

/// One field of a tracepoint record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldFormat {
    /// Byte offset from the start of the record (the common_* header included).
    pub offset: u32,
    /// Size in bytes (for arrays, of the whole array).
    pub size: u32,
    pub signed: bool,
    /// The C declaration without the name, e.g. `const void *`, `__u8[4]`.
    pub c_type: String,
}

/// The parsed `events/<category>/<name>/format` file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TracepointFormat {
    pub name: String,
    pub id: Option<u32>,
    pub fields: BTreeMap<String, FieldFormat>,
}

impl TracepointFormat {
    /// Parses the text of a format file. Lines that are not `field:` lines (name, ID, print
    /// fmt) are read for name and ID only; a malformed field line is an error, since reading a
    /// field at a wrong offset would be worse than not reading it.
    pub fn parse(text: &str) -> anyhow::Result<TracepointFormat> {
        let mut format = TracepointFormat::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("name:") {
                format.name = name.trim().to_string();
            } else if let Some(id) = line.strip_prefix("ID:") {
                format.id = id.trim().parse().ok();
            } else if line.starts_with("field:") {
                let (name, field) =
                    parse_field_line(line).with_context(|| format!("bad format line `{line}`"))?;
                format.fields.insert(name, field);
            }
        }
        if format.fields.is_empty() {
            bail!("no fields in format text");
        }
        Ok(format)
    }

    pub fn field(&self, name: &str) -> Option<&FieldFormat> {
        self.fields.get(name)
    }
}

/// `field:const void * skaddr;<TAB>offset:8;<TAB>size:8;<TAB>signed:0;` -> ("skaddr", {8, 8, false}).
/// Arrays (`field:__u8 saddr[4];`) keep the name without brackets; `__data_loc char[] name`
/// declarations have the name last as well.
fn parse_field_line(line: &str) -> anyhow::Result<(String, FieldFormat)> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once(':').ok_or_else(|| anyhow!("no `:` in `{part}`"))?;
        match key.trim() {
            "field" => decl = Some(value.trim().to_string()),
            "offset" => offset = Some(value.trim().parse::<u32>().context("offset")?),
            "size" => size = Some(value.trim().parse::<u32>().context("size")?),
            "signed" => signed = value.trim() == "1",
            _ => {}
        }
    }
    let decl = decl.ok_or_else(|| anyhow!("no field declaration"))?;
    let (offset, size) = match (offset, size) {
        (Some(o), Some(s)) => (o, s),
        _ => bail!("missing offset or size"),
    };
    let (c_type, last) = match decl.rfind(|c: char| c.is_whitespace() || c == '*') {
        Some(i) => (decl[..=i].trim().to_string(), decl[i + 1..].trim()),
        None => bail!("no type in `{decl}`"),
    };
    let (name, array) = match last.find('[') {
        Some(i) => (&last[..i], &last[i..]),
        None => (last, ""),
    };
    if name.is_empty() {
        bail!("no field name in `{decl}`");
    }
    Ok((name.to_string(), FieldFormat { offset, size, signed, c_type: format!("{c_type}{array}") }))
}

fn event_dir(tracefs: &Path, category: &str, name: &str) -> PathBuf {
    tracefs.join("events").join(category).join(name)
}

/// Reads and parses `events/<category>/<name>/format`.
pub fn read_format(tracefs: &Path, category: &str, name: &str) -> anyhow::Result<TracepointFormat> {
    let path = event_dir(tracefs, category, name).join("format");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    TracepointFormat::parse(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Whether this kernel has the tracepoint `<category>:<name>`.
pub fn tracepoint_exists(tracefs: &Path, category: &str, name: &str) -> bool {
    event_dir(tracefs, category, name).join("format").is_file()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `events/tcp/tcp_send_reset/format` recorded on kernel 6.18 (print fmt shortened): its
    /// addresses are sockaddr images, not sport/dport/saddr fields.
    pub(crate) const TCP_SEND_RESET_6_18: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;

print fmt: \"skbaddr=%p skaddr=%p src=%pISpc dest=%pISpc state=%s reason=%s\", REC->skbaddr, REC->skaddr, REC->saddr, REC->daddr
";

    /// `events/sock/inet_sock_set_state/format` recorded on kernel 6.18 (print fmt shortened).
    pub(crate) const INET_SOCK_SET_STATE_6_18: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu dport=%hu\", REC->family, REC->protocol, REC->sport, REC->dport
";

    #[test]
    fn parses_inet_sock_set_state_format() {
        let f = TracepointFormat::parse(INET_SOCK_SET_STATE_6_18).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, Some(2287));
        let sk = f.field("skaddr").unwrap();
        assert_eq!((sk.offset, sk.size, sk.signed), (8, 8, false));
        assert_eq!(sk.c_type, "const void *");
        let old = f.field("oldstate").unwrap();
        assert_eq!((old.offset, old.size, old.signed), (16, 4, true));
        let saddr = f.field("saddr").unwrap();
        assert_eq!((saddr.offset, saddr.size), (32, 4));
        assert_eq!(saddr.c_type, "__u8[4]");
        assert_eq!(f.field("daddr_v6").unwrap().offset, 56);
        assert_eq!(f.field("common_pid").unwrap().offset, 4);
        assert!(f.field("print").is_none());
    }

    #[test]
    fn parses_sockaddr_arrays_and_enum_types() {
        let f = TracepointFormat::parse(TCP_SEND_RESET_6_18).unwrap();
        let reason = f.field("reason").unwrap();
        assert_eq!((reason.offset, reason.size), (28, 4));
        assert_eq!(reason.c_type, "enum sk_rst_reason");
        let saddr = f.field("saddr").unwrap();
        assert_eq!((saddr.offset, saddr.size), (32, 28));
        assert!(f.field("sport").is_none());
    }

    #[test]
    fn parses_data_loc_fields() {
        let text = "name: x\nformat:\n\tfield:__data_loc char[] name;\toffset:8;\tsize:4;\tsigned:0;\n";
        let f = TracepointFormat::parse(text).unwrap();
        assert_eq!(f.field("name").unwrap().c_type, "__data_loc char[]");
    }

    #[test]
    fn rejects_malformed_field_lines() {
        assert!(TracepointFormat::parse("format:\n\tfield:int x;\toffset:zz;\tsize:4;\n").is_err());
        assert!(TracepointFormat::parse("format:\n\tfield:int x;\tsize:4;\n").is_err());
        assert!(TracepointFormat::parse("name: nothing\n").is_err());
    }

    #[test]
    fn finds_tracefs_mount_points() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      nodev /sys/kernel/debug/tracing tracefs rw 0 0\n\
                      nodev /sys/kernel/tracing tracefs rw,relatime 0 0\n\
                      nodev /mnt/my\\040trace tracefs rw 0 0\n";
        let points = tracefs_mount_points(mounts);
        assert_eq!(points[0], PathBuf::from("/sys/kernel/tracing"));
        assert!(points.contains(&PathBuf::from("/mnt/my trace")));
        assert_eq!(points.len(), 3);
    }
}
