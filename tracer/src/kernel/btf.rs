//! Struct member offsets and enum values of the running kernel, read from its BTF
//! (/sys/kernel/btf/vmlinux). Nothing here is a constant: layouts and enum numbers change
//! between kernel versions and configurations (the drop-reason enum is renumbered often).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use btf_rs::{Btf, Member, Struct, Type};
use tracer_common::{ConnConfig, FnHookConfig, KernelEnums, KernelOffsets, SockFields, TaskFields, FIELD_ABSENT};

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const DROP_REASON_ENUM: &str = "skb_drop_reason";
const DROP_REASON_PREFIX: &str = "SKB_DROP_REASON_";
const RST_REASON_ENUM: &str = "sk_rst_reason";
const RST_REASON_PREFIX: &str = "SK_RST_REASON_";

/// The running kernel's BTF, parsed once.
pub struct KernelBtf {
    btf: Btf,
}

/// Where a (possibly nested) member lies inside its outermost struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberLocation {
    pub byte_offset: u32,
    /// Size in bytes of the member's type (after typedefs and qualifiers).
    pub size: usize,
}

impl KernelBtf {
    /// Parses /sys/kernel/btf/vmlinux.
    pub fn load() -> anyhow::Result<KernelBtf> {
        Self::load_from(Path::new(VMLINUX_BTF))
    }

    pub fn load_from(path: &Path) -> anyhow::Result<KernelBtf> {
        if !path.exists() {
            bail!(
                "no kernel BTF at {}: tracer needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4)",
                path.display()
            );
        }
        let btf =
            Btf::from_file(path).map_err(|e| anyhow!("cannot read kernel BTF at {}: {e}", path.display()))?;
        Ok(KernelBtf { btf })
    }

    /// The member offsets the kernel programs read through `bpf_probe_read_kernel`.
    pub fn offsets(&self) -> anyhow::Result<KernelOffsets> {
        let ptr = std::mem::size_of::<usize>();
        Ok(KernelOffsets {
            sock_sk_err: self.offset_of_sized("sock", &["sk_err"], 4)?,
            sock_sk_ack_backlog: self.offset_of_sized("sock", &["sk_ack_backlog"], 4)?,
            sock_sk_max_ack_backlog: self.offset_of_sized("sock", &["sk_max_ack_backlog"], 4)?,
            // possible_net_t wraps `struct net *net`; the programs read that pointer.
            sock_skc_net: self.offset_of_sized("sock", &["__sk_common", "skc_net", "net"], ptr)?,
            net_ns_inum: self.offset_of_sized("net", &["ns", "inum"], 4)?,
            skb_sk: self.offset_of_sized("sk_buff", &["sk"], ptr)?,
            skb_head: self.offset_of_sized("sk_buff", &["head"], ptr)?,
            skb_network_header: self.offset_of_sized("sk_buff", &["network_header"], 2)?,
            skb_transport_header: self.offset_of_sized("sk_buff", &["transport_header"], 2)?,
            task_nsproxy: self.offset_of_sized("task_struct", &["nsproxy"], ptr)?,
            nsproxy_net_ns: self.offset_of_sized("nsproxy", &["net_ns"], ptr)?,
            skb_protocol: self.offset_of_sized("sk_buff", &["protocol"], 2).unwrap_or(FIELD_ABSENT),
        })
    }

    /// The enum values the kernel programs compare with. TCP states and IPPROTO_TCP must
    /// exist; drop reasons are `FIELD_ABSENT` when this kernel lacks them
    /// (TCP_LISTEN_OVERFLOW appeared in 6.15, the whole enum in 5.17).
    pub fn enums(&self) -> anyhow::Result<KernelEnums> {
        let anonymous = self.anonymous_enums();
        let tcp_states = tcp_states(&anonymous).ok_or_else(|| anyhow!("kernel BTF has no enum with TCP_ESTABLISHED"))?;
        let tcp = |name: &str| -> anyhow::Result<u32> {
            lookup(tcp_states, name).ok_or_else(|| anyhow!("kernel BTF has no enum value {name}"))
        };
        let ipproto_tcp = anonymous
            .iter()
            .find_map(|members| lookup(members, "IPPROTO_TCP"))
            .ok_or_else(|| anyhow!("kernel BTF has no enum value IPPROTO_TCP"))?;
        let drop = self.named_enum(DROP_REASON_ENUM);
        let drop_value =
            |suffix: &str| lookup(&drop, &format!("{DROP_REASON_PREFIX}{suffix}")).unwrap_or(FIELD_ABSENT);
        Ok(KernelEnums {
            tcp_established: tcp("TCP_ESTABLISHED")?,
            tcp_syn_sent: tcp("TCP_SYN_SENT")?,
            tcp_close: tcp("TCP_CLOSE")?,
            tcp_listen: tcp("TCP_LISTEN")?,
            drop_no_socket: drop_value("NO_SOCKET"),
            drop_netfilter_drop: drop_value("NETFILTER_DROP"),
            drop_tcp_listen_overflow: drop_value("TCP_LISTEN_OVERFLOW"),
            ipproto_tcp,
        })
    }

    /// What the after-connect checks read. Off (`enabled` 0) when a member they need is
    /// missing: they then send nothing rather than guess.
    pub fn conn_config(&self) -> ConnConfig {
        let anonymous = self.anonymous_enums();
        let state = |name: &str| tcp_states(&anonymous).and_then(|m| lookup(m, name));
        let member = |s: &str, path: &[&str], size: usize| self.offset_of_sized(s, path, size).ok();
        let (Some(close_wait), Some(fin_wait1), Some(last_ack), Some(sent), Some(received)) = (
            state("TCP_CLOSE_WAIT"),
            state("TCP_FIN_WAIT1"),
            state("TCP_LAST_ACK"),
            member("tcp_sock", &["bytes_sent"], 8),
            member("tcp_sock", &["bytes_received"], 8),
        ) else {
            return ConnConfig::ABSENT;
        };
        ConnConfig {
            tcp_close_wait: close_wait,
            tcp_fin_wait1: fin_wait1,
            tcp_bytes_sent: sent,
            tcp_bytes_received: received,
            tcp_rcv_tstamp: member("tcp_sock", &["rcv_tstamp"], 4).unwrap_or(FIELD_ABSENT),
            icsk_lrcvtime: member("tcp_sock", &["inet_conn", "icsk_ack", "lrcvtime"], 4).unwrap_or(FIELD_ABSENT),
            enabled: 1,
            tcp_rcv_nxt: member("tcp_sock", &["rcv_nxt"], 4).unwrap_or(FIELD_ABSENT),
            tcp_copied_seq: member("tcp_sock", &["copied_seq"], 4).unwrap_or(FIELD_ABSENT),
            tcp_last_ack: last_ack,
        }
    }

    /// The socket members the raw tracepoint on inet_sock_set_state reads (each absent one
    /// `FIELD_ABSENT`: the classic tracepoint serves then).
    pub fn sock_fields(&self) -> SockFields {
        let member = |path: &[&str], size: usize| self.offset_of_sized("sock", path, size).unwrap_or(FIELD_ABSENT);
        SockFields {
            sk_protocol: member(&["sk_protocol"], 2),
            skc_family: member(&["__sk_common", "skc_family"], 2),
            skc_dport: member(&["__sk_common", "skc_dport"], 2),
            inet_sport: self.offset_of_sized("inet_sock", &["inet_sport"], 2).unwrap_or(FIELD_ABSENT),
            skc_daddr: member(&["__sk_common", "skc_daddr"], 4),
            skc_rcv_saddr: member(&["__sk_common", "skc_rcv_saddr"], 4),
            skc_v6_daddr: member(&["__sk_common", "skc_v6_daddr"], 16),
            skc_v6_rcv_saddr: member(&["__sk_common", "skc_v6_rcv_saddr"], 16),
        }
    }

    /// The task members the BTF tracepoint on inet_sock_set_state loads for a connect's owner
    /// (each absent one `FIELD_ABSENT`: the raw tracepoint serves then), and whether it can
    /// reach them: `bpf_get_current_task_btf` is in `enum bpf_func_id` since 5.11.
    pub fn task_fields(&self) -> TaskFields {
        let ptr = std::mem::size_of::<u64>();
        let member = |s: &str, path: &[&str], size: usize| self.offset_of_sized(s, path, size).unwrap_or(FIELD_ABSENT);
        TaskFields {
            pid: member("task_struct", &["pid"], 4),
            tgid: member("task_struct", &["tgid"], 4),
            comm: member("task_struct", &["comm"], tracer_common::TASK_COMM_LEN),
            cred: member("task_struct", &["cred"], ptr),
            cred_uid: member("cred", &["uid"], 4),
            from_task_btf: self.enum_value(Some("bpf_func_id"), "BPF_FUNC_get_current_task_btf").is_some() as u32,
        }
    }

    /// Names of drop and RST reasons, for decoding the raw numbers events carry.
    pub fn names(&self) -> BtfNames {
        let strip = |members: Vec<(String, u32)>, prefix: &str| -> ReasonTable {
            let mut map = ReasonTable::default();
            for (name, value) in members {
                let short: Arc<str> = name.strip_prefix(prefix).unwrap_or(&name).into();
                // Keep the first name of a value: aliases such as ..._MAX come last.
                map.entry(value).or_insert(short);
            }
            map
        };
        BtfNames {
            drop_reasons: strip(self.named_enum(DROP_REASON_ENUM), DROP_REASON_PREFIX),
            rst_reasons: strip(self.named_enum(RST_REASON_ENUM), RST_REASON_PREFIX),
        }
    }

    /// Byte offset of `struct <struct_name>` member `path` (each step searched through
    /// anonymous structs and unions), checking the member's size.
    pub fn offset_of_sized(
        &self,
        struct_name: &str,
        path: &[&str],
        expected_size: usize,
    ) -> anyhow::Result<u32> {
        let loc = self.member_location(struct_name, path)?;
        if loc.size != expected_size {
            bail!(
                "kernel BTF: struct {struct_name}.{} is {} bytes, tracer reads {expected_size}",
                path.join("."),
                loc.size
            );
        }
        Ok(loc.byte_offset)
    }

    /// Offset and size of `struct <struct_name>` member `path` (e.g. `["__sk_common",
    /// "skc_net"]`), summing the offsets of the nested members.
    pub fn member_location(&self, struct_name: &str, path: &[&str]) -> anyhow::Result<MemberLocation> {
        let dotted = || format!("struct {struct_name}.{}", path.join("."));
        let mut current = self.struct_named(struct_name)?;
        let mut bits = 0u32;
        let mut last: Option<Member> = None;
        for (i, step) in path.iter().enumerate() {
            let (offset, member) = self
                .find_member(&current, step)?
                .ok_or_else(|| anyhow!("kernel BTF has no member {}", dotted()))?;
            if member.bitfield_size().unwrap_or(0) != 0 {
                bail!("kernel BTF: {} is a bitfield, tracer cannot read it", dotted());
            }
            bits += offset;
            if i + 1 < path.len() {
                current = self
                    .composite_of(&member)?
                    .ok_or_else(|| anyhow!("kernel BTF: {step} in {} is not a struct", dotted()))?;
            }
            last = Some(member);
        }
        let member = last.ok_or_else(|| anyhow!("empty member path for struct {struct_name}"))?;
        if !bits.is_multiple_of(8) {
            bail!("kernel BTF: {} is not byte aligned (bit {bits})", dotted());
        }
        let ty = self.btf.resolve_chained_type(&member).with_context(dotted)?;
        Ok(MemberLocation { byte_offset: bits / 8, size: self.type_size(&ty).with_context(dotted)? })
    }

    /// The value of enum member `member` in `enum <enum_name>`, or in any anonymous enum when
    /// `enum_name` is None.
    pub fn enum_value(&self, enum_name: Option<&str>, member: &str) -> Option<u32> {
        match enum_name {
            Some(name) => lookup(&self.named_enum(name), member),
            None => self.anonymous_enums().iter().find_map(|m| lookup(m, member)),
        }
    }

    /// The member offsets and enum values only the function hooks need.
    pub fn fn_hook_config(&self) -> anyhow::Result<FnHookConfig> {
        let anonymous = self.anonymous_enums();
        let syn_recv = anonymous
            .iter()
            .find(|members| members.iter().any(|(n, _)| n == "TCP_ESTABLISHED"))
            .and_then(|members| lookup(members, "TCP_SYN_RECV"))
            .ok_or_else(|| anyhow!("kernel BTF has no enum value TCP_SYN_RECV"))?;
        Ok(FnHookConfig {
            sock_skc_num: self.offset_of_sized("sock", &["__sk_common", "skc_num"], 2)?,
            sock_skc_family: self.offset_of_sized("sock", &["__sk_common", "skc_family"], 2)?,
            tcp_syn_recv: syn_recv,
            active: 0,
            sock_rcvq_len: self.offset_of_sized("sock", &["sk_receive_queue", "qlen"], 4)?,
            _pad: 0,
        })
    }

    /// The prototype of kernel function `name` (its FUNC and FUNC_PROTO), None when BTF has no
    /// such function (not built, or renamed).
    pub fn function_prototype(&self, name: &str) -> Option<FnPrototype> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        let func = types.into_iter().find_map(|t| match t {
            Type::Func(f) => Some(f),
            _ => None,
        })?;
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&func).ok()? else { return None };
        let params = proto
            .parameters
            .iter()
            .map(|p| {
                let name = self.btf.resolve_name(p).unwrap_or_default();
                let ty = self.btf.resolve_chained_type(p).map(|t| self.type_name(&t)).unwrap_or_else(|_| "?".into());
                (name, ty)
            })
            .collect();
        Some(FnPrototype { name: name.to_string(), params })
    }

    /// The prototypes of `names`, in order.
    pub fn function_prototypes(&self, names: &[&'static str]) -> Vec<(&'static str, Option<FnPrototype>)> {
        names.iter().map(|n| (*n, self.function_prototype(n))).collect()
    }

    /// A C-like name for a parameter type: `struct sock *`, `int`, `bool`.
    fn type_name(&self, ty: &Type) -> String {
        let mut stars = 0;
        let mut ty = ty.clone();
        for _ in 0..16 {
            ty = match &ty {
                Type::Ptr(p) => {
                    stars += 1;
                    match self.btf.resolve_chained_type(p) {
                        Ok(t) => t,
                        Err(_) => return format!("void {}", "*".repeat(stars)),
                    }
                }
                Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => match self.strip_modifiers(ty.clone()) {
                    Ok(t) => t,
                    Err(_) => break,
                },
                _ => break,
            };
        }
        let base = match &ty {
            Type::Struct(s) => format!("struct {}", self.btf.resolve_name(s).unwrap_or_default()),
            Type::Union(s) => format!("union {}", self.btf.resolve_name(s).unwrap_or_default()),
            Type::Void => "void".to_string(),
            other => other
                .as_btf_type()
                .and_then(|t| self.btf.resolve_name(t).ok())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| other.name().to_string()),
        };
        if stars == 0 {
            base
        } else {
            format!("{base} {}", "*".repeat(stars))
        }
    }

    fn struct_named(&self, name: &str) -> anyhow::Result<Struct> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| anyhow!("kernel BTF has no struct {name}"))
    }

    /// Finds `name` among the members of `st`, descending into anonymous struct/union members
    /// (sk_buff.sk sits in an anonymous union inside an anonymous struct). Returns the bit
    /// offset relative to `st`.
    fn find_member(&self, st: &Struct, name: &str) -> anyhow::Result<Option<(u32, Member)>> {
        for member in &st.members {
            let member_name = self.btf.resolve_name(member).unwrap_or_default();
            if member_name == name {
                return Ok(Some((member.bit_offset(), member.clone())));
            }
            if member_name.is_empty() {
                if let Some(inner) = self.composite_of(member)? {
                    if let Some((offset, found)) = self.find_member(&inner, name)? {
                        return Ok(Some((member.bit_offset() + offset, found)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The struct or union a member's type is, through typedefs and qualifiers.
    fn composite_of(&self, member: &Member) -> anyhow::Result<Option<Struct>> {
        let ty = self.strip_modifiers(self.btf.resolve_chained_type(member)?)?;
        Ok(match ty {
            Type::Struct(s) | Type::Union(s) => Some(s),
            _ => None,
        })
    }

    /// Follows typedefs, const, volatile, restrict and type tags to the underlying type.
    fn strip_modifiers(&self, mut ty: Type) -> anyhow::Result<Type> {
        // Chains are short; the bound only protects against a malformed loop.
        for _ in 0..32 {
            ty = match &ty {
                Type::Typedef(t) => self.btf.resolve_chained_type(t)?,
                Type::Const(t) => self.btf.resolve_chained_type(t)?,
                Type::Volatile(t) => self.btf.resolve_chained_type(t)?,
                Type::Restrict(t) => self.btf.resolve_chained_type(t)?,
                Type::TypeTag(t) => self.btf.resolve_chained_type(t)?,
                _ => return Ok(ty),
            };
        }
        bail!("type chain too long")
    }

    fn type_size(&self, ty: &Type) -> anyhow::Result<usize> {
        Ok(match self.strip_modifiers(ty.clone())? {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => std::mem::size_of::<usize>(),
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Float(f) => f.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Array(a) => {
                let elem = self.btf.resolve_chained_type(&a)?;
                self.type_size(&elem)? * a.len()
            }
            other => bail!("type {} has no size", other.name()),
        })
    }

    /// Members of every `enum <name>` (normally one), as (name, value) pairs; empty when the
    /// kernel has no such enum. Values that do not fit u32 are left out.
    fn named_enum(&self, name: &str) -> Vec<(String, u32)> {
        let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
        types.iter().flat_map(|t| self.enum_members(t)).collect()
    }

    /// The member lists of every anonymous enum.
    fn anonymous_enums(&self) -> Vec<Vec<(String, u32)>> {
        let types = self.btf.resolve_types_by_name("").unwrap_or_default();
        types
            .iter()
            .filter(|t| matches!(t, Type::Enum(_) | Type::Enum64(_)))
            .map(|t| self.enum_members(t))
            .collect()
    }

    fn enum_members(&self, ty: &Type) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        match ty {
            Type::Enum(e) => {
                for m in &e.members {
                    if let Ok(name) = self.btf.resolve_name(m) {
                        out.push((name, m.val()));
                    }
                }
            }
            Type::Enum64(e) => {
                for m in &e.members {
                    if let (Ok(name), Ok(v)) = (self.btf.resolve_name(m), u32::try_from(m.val())) {
                        out.push((name, v));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// A kernel function's prototype as BTF gives it: parameter names and C-like types.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FnPrototype {
    pub name: String,
    pub params: Vec<(String, String)>,
}

impl FnPrototype {
    /// `inet_csk_accept(struct sock *sk, struct proto_accept_arg *arg)`.
    pub fn render(&self) -> String {
        let params: Vec<String> = self.params.iter().map(|(n, t)| format!("{t}{}{n}", if t.ends_with('*') { "" } else { " " })).collect();
        format!("{}({})", self.name, params.join(", "))
    }

    /// Parameter types in order (for matching a program variant).
    pub fn types(&self) -> Vec<&str> {
        self.params.iter().map(|(_, t)| t.as_str()).collect()
    }
}

/// The TCP states among the anonymous enums (include/net/tcp_states.h): the one that holds
/// TCP_ESTABLISHED, so that no unrelated enum with a like name is used.
fn tcp_states(anonymous: &[Vec<(String, u32)>]) -> Option<&Vec<(String, u32)>> {
    anonymous.iter().find(|members| members.iter().any(|(n, _)| n == "TCP_ESTABLISHED"))
}

fn lookup(members: &[(String, u32)], name: &str) -> Option<u32> {
    members.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

/// Reason names by value. Every refused connect looks two of them up: shared copies, and a
/// hasher that needs no protection from crafted keys (the kernel's own enum values).
type ReasonTable = HashMap<u32, Arc<str>, ahash::RandomState>;

/// Names of the kernel's drop and RST reasons, by value, without their prefixes
/// (`SKB_DROP_REASON_NO_SOCKET` -> `NO_SOCKET`). Empty maps when BTF lacks the enums.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtfNames {
    drop_reasons: ReasonTable,
    rst_reasons: ReasonTable,
}

impl BtfNames {
    /// Builds the tables from (value, short name) pairs, e.g. for tests of the decoder.
    pub fn new(
        drop_reasons: impl IntoIterator<Item = (u32, String)>,
        rst_reasons: impl IntoIterator<Item = (u32, String)>,
    ) -> BtfNames {
        BtfNames {
            drop_reasons: drop_reasons.into_iter().map(|(v, name)| (v, name.into())).collect(),
            rst_reasons: rst_reasons.into_iter().map(|(v, name)| (v, name.into())).collect(),
        }
    }

    /// `enum skb_drop_reason` value -> name without `SKB_DROP_REASON_`.
    pub fn drop_reason_name(&self, value: u32) -> Option<Arc<str>> {
        self.drop_reasons.get(&value).cloned()
    }

    /// `enum sk_rst_reason` value -> name without `SK_RST_REASON_`.
    pub fn rst_reason_name(&self, value: u32) -> Option<Arc<str>> {
        self.rst_reasons.get(&value).cloned()
    }

    /// Number of drop reasons known (0 when this kernel's BTF has no skb_drop_reason).
    pub fn drop_reason_count(&self) -> usize {
        self.drop_reasons.len()
    }

    pub fn rst_reason_count(&self) -> usize {
        self.rst_reasons.len()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::OnceLock;

    /// The running kernel's BTF, parsed once for all tests; None (with the reason printed)
    /// when this machine has none.
    pub(crate) fn kernel_btf() -> Option<&'static KernelBtf> {
        static BTF: OnceLock<Option<KernelBtf>> = OnceLock::new();
        let btf = BTF.get_or_init(|| match KernelBtf::load() {
            Ok(btf) => Some(btf),
            Err(e) => {
                note!("skipping BTF tests: {e}");
                None
            }
        });
        if btf.is_none() {
            note!("skipped: no kernel BTF at {VMLINUX_BTF}");
        }
        btf.as_ref()
    }

    #[test]
    fn missing_btf_names_problem_and_fix() {
        let err = KernelBtf::load_from(Path::new("/nonexistent/vmlinux")).err().unwrap();
        let msg = err.to_string();
        assert!(msg.contains("no kernel BTF at /nonexistent/vmlinux"), "{msg}");
        assert!(msg.contains("CONFIG_DEBUG_INFO_BTF=y"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn offsets_are_plausible() {
        let Some(btf) = kernel_btf() else { return };
        let o = btf.offsets().unwrap();
        println!("{o:#?}");
        // struct sock starts with __sk_common (skc_net inside it, after the addresses).
        assert!(o.sock_skc_net > 0 && o.sock_skc_net < 128, "{o:?}");
        for v in [o.sock_sk_err, o.sock_sk_ack_backlog, o.sock_sk_max_ack_backlog] {
            assert!(v > o.sock_skc_net && v < 4096, "{o:?}");
        }
        assert_eq!(o.sock_sk_err % 4, 0);
        assert_ne!(o.sock_sk_ack_backlog, o.sock_sk_max_ack_backlog);
        assert!(o.net_ns_inum > 0 && o.net_ns_inum < 4096, "{o:?}");
        // sk_buff: sk after next/prev/dev; head after the headers; headers are u16.
        assert!(o.skb_sk > 0 && o.skb_sk < 64, "{o:?}");
        assert!(o.skb_head > o.skb_sk && o.skb_head < 512, "{o:?}");
        assert!(o.skb_network_header > o.skb_sk && o.skb_network_header < 512);
        assert!(o.skb_protocol != FIELD_ABSENT && o.skb_protocol > o.skb_sk && o.skb_protocol < 512, "{o:?}");
        assert!(o.skb_transport_header > o.skb_sk && o.skb_transport_header < 512);
        assert_eq!(o.skb_sk % 8, 0);
        assert_eq!(o.skb_head % 8, 0);
    }

    /// The raw tracepoint reads sock_common's address and port pairs, which sit in anonymous
    /// unions: the well-known layout (include/net/sock.h) comes out of BTF.
    #[test]
    fn sock_fields_for_the_raw_tracepoint_resolve() {
        let Some(btf) = kernel_btf() else { return };
        let s = btf.sock_fields();
        assert!(s.complete(), "{s:?}");
        assert_eq!((s.skc_daddr, s.skc_rcv_saddr), (0, 4), "skc_addrpair opens sock_common: {s:?}");
        assert!(s.sk_protocol > s.skc_v6_rcv_saddr, "{s:?}");
        assert!(s.inet_sport > s.sk_protocol, "inet_sock's members follow its struct sock: {s:?}");
    }

    /// The BTF tracepoint records a connect's owner from the task's own members.
    #[test]
    fn task_fields_for_the_btf_tracepoint_resolve() {
        let Some(btf) = kernel_btf() else { return };
        let t = btf.task_fields();
        assert!(t.complete(), "{t:?}");
        // pid and tgid are neighbours (include/linux/sched.h); comm comes well after them.
        assert_eq!(t.tgid, t.pid + 4, "{t:?}");
        assert!(t.comm > t.cred && t.cred > t.tgid, "{t:?}");
        assert_eq!(t.cred % 8, 0);
        assert!(t.cred_uid < 64, "{t:?}");
        // bpf_get_current_task_btf came with 5.11: every kernel this runs on in CI has it
        // (the kernel matrix's 5.10 does not, and its console log shows the other branch).
        let release = crate::kernel::facts::kernel_release();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
        let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
        assert_eq!(t.from_task_btf, (version >= (5, 11)) as u32, "{release}: {t:?}");
    }

    #[test]
    fn nested_and_anonymous_members_resolve() {
        let Some(btf) = kernel_btf() else { return };
        let common = btf.member_location("sock", &["__sk_common"]).unwrap();
        let net = btf.member_location("sock_common", &["skc_net"]).unwrap();
        let nested = btf.member_location("sock", &["__sk_common", "skc_net"]).unwrap();
        assert_eq!(nested.byte_offset, common.byte_offset + net.byte_offset);
        assert!(btf.member_location("sock", &["no_such_member"]).is_err());
        let err = btf.member_location("sock", &["sk_nope"]).unwrap_err().to_string();
        assert!(err.contains("struct sock.sk_nope"), "{err}");
        assert!(btf.member_location("no_such_struct_xyz", &["a"]).is_err());
        assert!(btf.offset_of_sized("sk_buff", &["network_header"], 4).is_err());
    }

    #[test]
    fn enums_match_their_names() {
        let Some(btf) = kernel_btf() else { return };
        let e = btf.enums().unwrap();
        let names = btf.names();
        println!("{e:#?}");
        assert_eq!(btf.enum_value(None, "TCP_ESTABLISHED"), Some(e.tcp_established));
        assert_ne!(e.tcp_syn_sent, e.tcp_close);
        assert_ne!(e.tcp_listen, e.tcp_established);
        assert_eq!(btf.enum_value(None, "IPPROTO_TCP"), Some(e.ipproto_tcp));
        let no_socket = btf.enum_value(Some("skb_drop_reason"), "SKB_DROP_REASON_NO_SOCKET");
        assert_eq!(no_socket, Some(e.drop_no_socket));
        assert_eq!(names.drop_reason_name(e.drop_no_socket).as_deref(), Some("NO_SOCKET"));
        assert_eq!(names.drop_reason_name(e.drop_netfilter_drop).as_deref(), Some("NETFILTER_DROP"));
        if e.drop_tcp_listen_overflow != FIELD_ABSENT {
            assert_eq!(
                names.drop_reason_name(e.drop_tcp_listen_overflow).as_deref(),
                Some("TCP_LISTEN_OVERFLOW")
            );
        } else {
            println!("this kernel has no SKB_DROP_REASON_TCP_LISTEN_OVERFLOW");
        }
        if let Some(v) = btf.enum_value(Some("sk_rst_reason"), "SK_RST_REASON_NO_SOCKET") {
            assert_eq!(names.rst_reason_name(v).as_deref(), Some("NO_SOCKET"));
        }
        assert!(names.drop_reason_name(u32::MAX - 1).is_none());
    }

    #[test]
    fn names_from_pairs() {
        let names = BtfNames::new([(3, "NO_SOCKET".to_string())], []);
        assert_eq!(names.drop_reason_name(3).as_deref(), Some("NO_SOCKET"));
        assert_eq!(names.rst_reason_name(3), None);
    }
}

#[cfg(test)]
mod prototype_tests {
    use super::tests::kernel_btf;
    use crate::kernel::hooks;

    #[test]
    fn hooked_functions_have_prototypes_here() {
        let Some(btf) = kernel_btf() else { return };
        for (name, proto) in btf.function_prototypes(&hooks::function_names()) {
            let proto = proto.unwrap_or_else(|| panic!("no BTF prototype for {name}"));
            println!("{}", proto.render());
            assert_eq!(proto.types().first().map(|t| t.ends_with('*')), Some(true), "{}", proto.render());
        }
        let connect = btf.function_prototype("tcp_connect").unwrap();
        assert_eq!(connect.render(), "tcp_connect(struct sock *sk)");
        assert!(btf.function_prototype("no_such_function_xyz").is_none());
        let cfg = btf.fn_hook_config().unwrap();
        assert_ne!(cfg.sock_skc_num, cfg.sock_skc_family);
        assert_eq!(btf.enum_value(None, "TCP_SYN_RECV"), Some(cfg.tcp_syn_recv));
    }
}
