//! One file per hook. Each `#[tracepoint]` function is a thin `try_` wrapper: a program never
//! fails loudly in the kernel, it just returns.
mod bind;
mod conn_end;
mod connect;
mod fhooks;
mod icmp_send;
mod kfree_skb;
pub mod lifecycle;
mod receive_reset;
mod retransmit;
mod send_reset;
mod set_state;
