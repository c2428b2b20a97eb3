//! Which cgroup (and container, or systemd unit) a process lives in, from /proc/PID/cgroup.

use procfs::ProcessCGroups;

/// A process's cgroup and what it tells about containers and units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupInfo {
    pub path: String,
    /// Container id (64 hex digits) when the path names one (docker, containerd, cri-o, podman).
    pub container: Option<String>,
    /// Kubernetes pod uid, dashed (`1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e`), when the path is
    /// under a kubepods cgroup that names one.
    pub pod: Option<String>,
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
    Some(from_path(path))
}

/// What a cgroup path says: container, pod, systemd unit.
pub fn from_path(path: String) -> CgroupInfo {
    CgroupInfo { container: container_id(&path), pod: pod_uid(&path), unit: systemd_unit(&path), path }
}

/// A 64-hex-digit id in one path component: `docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`, `/docker/<id>`, `/kubepods/.../<id>`, containerd's
/// `kubepods-...slice:cri-containerd:<id>`. The nearest to the process wins (a container in a
/// container is the inner one). A conmon scope (`libpod-conmon-<id>`, `crio-conmon-<id>`)
/// holds podman's or cri-o's monitor of that container, not the container: no id.
fn container_id(path: &str) -> Option<String> {
    path.split('/').rev().find_map(|comp| {
        let comp = comp.trim_end_matches(".scope");
        if comp.contains("-conmon-") || comp.starts_with("conmon-") {
            return None;
        }
        let id = comp.rsplit(['-', ':']).next().unwrap_or(comp);
        is_hex(id, 64).then(|| id.to_ascii_lowercase())
    })
}

/// The pod uid in a kubelet's cgroup path: `pod<uid>` as a component under `/kubepods` (the
/// cgroupfs driver: `/kubepods/burstable/pod<uid>/<id>`), or as the end of a slice name (the
/// systemd driver: `kubepods-burstable-pod<uid with _ for ->.slice`), also inside containerd's
/// `slice:prefix:id` component. A uid is a UUID, or 32 hex digits for a static pod (the hash
/// of its manifest).
fn pod_uid(path: &str) -> Option<String> {
    if !path.split('/').any(|c| c.starts_with("kubepods")) {
        return None;
    }
    path.split('/').rev().find_map(|comp| {
        let comp = comp.split(':').next().unwrap_or(comp);
        let comp = comp.strip_suffix(".slice").unwrap_or(comp);
        let tail = comp.rsplit_once("-pod").map(|(_, t)| t).or_else(|| comp.strip_prefix("pod"))?;
        canonical_uid(tail)
    })
}

/// `1b2c3d4e_5f6a_...` or `1b2c3d4e-5f6a-...` as the dashed, lower-case UUID; 32 hex digits
/// as they are.
fn canonical_uid(s: &str) -> Option<String> {
    let dashed = s.replace('_', "-").to_ascii_lowercase();
    let groups: Vec<&str> = dashed.split('-').collect();
    let uuid = groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| is_hex(g, n));
    (uuid || is_hex(&dashed, 32)).then_some(dashed)
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
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

    const ID: &str = "9a1c2b3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const UID: &str = "6f0e3c2a-1b4d-4e5f-8a9b-0c1d2e3f4a5b";

    /// (container, pod) of a cgroup v2 line for `path`.
    fn placed(path: &str) -> (Option<String>, Option<String>) {
        let c = parse_cgroup_file(&format!("0::{path}\n")).unwrap();
        assert_eq!(c.path, path);
        (c.container, c.pod)
    }

    #[test]
    fn kubernetes_systemd_driver_gives_the_container_and_the_dashed_pod_uid() {
        let uid_ = UID.replace('-', "_");
        for (qos, runtime) in [("burstable", "cri-containerd"), ("besteffort", "crio"), ("burstable", "docker")] {
            let path = format!("/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{uid_}.slice/{runtime}-{ID}.scope");
            assert_eq!(placed(&path), (Some(ID.into()), Some(UID.into())), "{path}");
        }
        // Guaranteed pods sit right under kubepods.slice.
        let path = format!("/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope");
        assert_eq!(placed(&path), (Some(ID.into()), Some(UID.into())));
        // The pod's own slice (its sandbox before a container starts): the pod, no container.
        let path = format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice");
        assert_eq!(placed(&path), (None, Some(UID.into())));
    }

    #[test]
    fn kubernetes_cgroupfs_driver_gives_the_container_and_the_pod_uid() {
        for qos in ["burstable/", "besteffort/", ""] {
            let path = format!("/kubepods/{qos}pod{UID}/{ID}");
            assert_eq!(placed(&path), (Some(ID.into()), Some(UID.into())), "{path}");
        }
        // A static pod's uid is the hash of its manifest: 32 hex digits.
        let path = format!("/kubepods/burstable/pod4e8b1c0a9d7f6e5d4c3b2a1908f7e6d5/{ID}");
        assert_eq!(placed(&path), (Some(ID.into()), Some("4e8b1c0a9d7f6e5d4c3b2a1908f7e6d5".into())));
    }

    #[test]
    fn containerd_under_its_service_names_the_pod_in_slice_prefix_id_form() {
        let uid_ = UID.replace('-', "_");
        let path = format!("/system.slice/containerd.service/kubepods-besteffort-pod{uid_}.slice:cri-containerd:{ID}");
        assert_eq!(placed(&path), (Some(ID.into()), Some(UID.into())));
        // containerd's shims in its own service are no container.
        assert_eq!(placed("/system.slice/containerd.service"), (None, None));
        // nerdctl without Kubernetes.
        assert_eq!(placed(&format!("/system.slice/nerdctl-{ID}.scope")), (Some(ID.into()), None));
        assert_eq!(placed(&format!("/default/{ID}")), (Some(ID.into()), None));
    }

    #[test]
    fn docker_podman_and_crio_layouts_give_the_container_and_no_pod() {
        for path in [
            format!("/system.slice/docker-{ID}.scope"),
            format!("/docker/{ID}"),
            format!("/machine.slice/libpod-{ID}.scope"),
            format!("/machine.slice/libpod-{ID}.scope/container"),
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            format!("/system.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(placed(&path), (Some(ID.into()), None), "{path}");
        }
        // conmon watches a container from outside it.
        assert_eq!(placed(&format!("/machine.slice/libpod-conmon-{ID}.scope")), (None, None));
        assert_eq!(placed(&format!("/system.slice/crio-conmon-{ID}.scope")), (None, None));
        // Upper-case hex (hand-made cgroups) is named the way `docker ps` does: lower case.
        assert_eq!(placed(&format!("/docker/{}", ID.to_uppercase())).0.as_deref(), Some(ID));
    }

    #[test]
    fn near_misses_name_no_container_and_no_pod() {
        // A pod-like name outside kubepods, a uid of the wrong shape, an id one digit short.
        assert_eq!(placed(&format!("/system.slice/app-pod{UID}.slice")), (None, None));
        assert_eq!(placed("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f0e3c2a_1b4d.slice"), (None, None));
        assert_eq!(placed(&format!("/kubepods/burstable/podzz0e3c2a-1b4d-4e5f-8a9b-0c1d2e3f4a5b/{}", &ID[1..])), (None, None));
        assert_eq!(placed("/kubepods.slice/kubepods-burstable.slice"), (None, None));
        assert_eq!(placed("/"), (None, None));
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
