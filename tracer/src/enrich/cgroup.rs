//! Which cgroup (and container, or systemd unit) a process lives in, from /proc/PID/cgroup.

use procfs::ProcessCGroups;

/// A process's cgroup and what it tells about containers and units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    pub path: String,
    /// Container id (64 hex digits) when the path names one (docker, containerd, cri-o, podman).
    pub container: Option<String>,
    /// systemd unit (e.g. `gunicorn.service`) when the path ends in one.
    pub unit: Option<String>,
}

/// The cgroup v2 path of `pid` (or the first v1 hierarchy's), `None` when the process is gone.
pub fn cgroup_of(pid: u32) -> Option<CgroupInfo> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    from_cgroups(&process.cgroups().ok()?)
}

/// The cgroup to report among a process's hierarchies: the unified one ("0::/path"), then
/// systemd's, then any.
pub fn from_cgroups(cgroups: &ProcessCGroups) -> Option<CgroupInfo> {
    let all = &cgroups.0;
    let path = all
        .iter()
        .find(|c| c.hierarchy == 0 && c.controllers.is_empty())
        .or_else(|| all.iter().find(|c| c.controllers.iter().any(|n| n == "name=systemd")))
        .or_else(|| all.first())
        .map(|c| c.pathname.clone())?;
    Some(CgroupInfo { container: container_id(&path), unit: systemd_unit(&path), path })
}

/// A 64-hex-digit id in one path component: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/docker/<id>`, `/kubepods/.../<id>`.
fn container_id(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|comp| {
        let comp = comp.trim_end_matches(".scope");
        let id = comp.rsplit(['-', ':']).next().unwrap_or(comp);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
    })
}

fn systemd_unit(path: &str) -> Option<String> {
    let last = path.rsplit('/').next()?;
    [".service", ".scope", ".socket"].iter().any(|s| last.ends_with(s)).then(|| last.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_cgroup_file(text: &str) -> Option<CgroupInfo> {
        from_cgroups(&procfs::FromBufRead::from_buf_read(text.as_bytes()).ok()?)
    }

    #[test]
    fn reads_paths_units_and_container_ids() {
        let host = "0::/system.slice/gunicorn.service\n";
        let c = parse_cgroup_file(host).unwrap();
        assert_eq!(c.path, "/system.slice/gunicorn.service");
        assert_eq!(c.unit.as_deref(), Some("gunicorn.service"));
        assert_eq!(c.container, None);

        let id = "3f4e1c0b9a8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f";
        let docker = format!("12:memory:/docker/{id}\n0::/system.slice/docker-{id}.scope\n");
        let c = parse_cgroup_file(&docker).unwrap();
        assert_eq!(c.container.as_deref(), Some(id));
        let k8s = format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope\n");
        assert_eq!(parse_cgroup_file(&k8s).unwrap().container.as_deref(), Some(id));
        let v1 = "5:name=systemd:/user.slice\n4:cpu:/\n";
        assert_eq!(parse_cgroup_file(v1).unwrap().path, "/user.slice");
    }
}

/// A `ProcessInfo` event for a listener's owner (parent pid, cgroup, systemd unit), read from
/// /proc while the process lives; `None` once it is gone.
pub fn process_info_event(task: &crate::event::TaskInfo, ts_ns: u64, netns: u32) -> Option<crate::event::Event> {
    let status = procfs::process::Process::new(i32::try_from(task.pid).ok()?).ok()?.status().ok()?;
    let ppid = u32::try_from(status.ppid).unwrap_or(0);
    let cg = cgroup_of(task.pid);
    Some(crate::event::Event {
        ts_ns,
        netns,
        sock: 0,
        task: task.clone(),
        body: crate::event::EventBody::ProcessInfo {
            ppid,
            cgroup: cg.as_ref().map(|c| c.path.clone()),
            unit: cg.and_then(|c| c.unit),
        },
    })
}
