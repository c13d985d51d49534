//! podnet's netlink client: links, addresses and routes, one connection per network
//! namespace, behind a synchronous API.
//!
//! The transport is the `rtnetlink` crate (netlink-proto underneath), chosen by
//! measurement over the hand-written socket loop this crate had (docs/dependencies.md:
//! on the daemon's 5,000-route first sync and podnet-cni ADD's netlink part it cost
//! less than 10 % more). What stays podnet's own is the synchronous surface and the
//! messages: each [`Netlink`] owns a current-thread tokio runtime that drives its
//! connection, so the CNI plugin (a short-lived process) and the daemon's reconcile pass
//! call it like any blocking function; called from inside another tokio runtime (the
//! lab, the daemon's async tasks) a request runs on a scoped thread of its own instead
//! of nesting runtimes.
//!
//! A socket belongs to the namespace it was created in, so [`Netlink::in_netns`]
//! creates the connection on a short-lived thread that enters the namespace and is then
//! discarded: no thread that keeps running ever changes namespace.
//!
//! This crate must never import Kubernetes types: podnet-cni links it.

mod link;
mod nexthop;
mod route;

use std::fs::File;
use std::future::Future;
use std::path::Path;

use futures::channel::mpsc::UnboundedReceiver;
use futures::{StreamExt, stream};
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{AsyncSocket, SocketAddr};
use nix::errno::Errno;
use rtnetlink::proto::Connection;
use tokio::runtime::Runtime;

pub use link::{LinkInfo, LinkKind};
pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
pub use nexthop::Nexthop;
pub use route::{Address, Dad, Route, RouteChange, RouteFilter};

/// What can go wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request.
    #[error("{op}: {errno}")]
    Kernel {
        /// What was asked, with the objects involved.
        op: String,
        /// The kernel's errno.
        errno: Errno,
    },
    /// The socket failed.
    #[error("netlink socket: {0}")]
    Io(#[from] std::io::Error),
    /// A namespace could not be entered.
    #[error("entering network namespace {path}: {errno}")]
    Netns {
        /// The namespace path.
        path: String,
        /// Why.
        errno: Errno,
    },
    /// A reply could not be decoded.
    #[error("decoding a netlink reply: {0}")]
    Decode(String),
}

impl Error {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// Whether the kernel refused because the object exists already (EEXIST).
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// Whether the kernel refused because the object does not exist (ENODEV, ESRCH,
    /// ENOENT, EADDRNOTAVAIL).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ESRCH | Errno::ENOENT | Errno::EADDRNOTAVAIL)
        )
    }
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

type Events = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// An rtnetlink connection bound to one network namespace.
pub struct Netlink {
    /// Drives the connection; `None` only while dropping.
    rt: Option<Runtime>,
    handle: rtnetlink::Handle,
    /// The connection until its first request: a group joined before then is joined on
    /// this same socket.
    unspawned: Option<Connection<RouteNetlinkMessage>>,
    /// Messages nobody asked for: the notifications of the joined groups.
    events: Events,
    groups: Vec<u32>,
    /// A plain socket for route dumps, decoded in place ([`route::dump_routes`]).
    dumps: netlink_sys::Socket,
    /// The last dump's sequence number.
    dump_seq: u32,
    /// The nexthop objects this connection has read or made, by gateway, device and
    /// protocol (see the `nexthop` module); `None` until needed or after a refusal.
    nexthop_cache: Option<std::collections::HashMap<nexthop::NexthopKey, u32>>,
}

/// The receive buffer asked for a socket that joins notification groups.
const NOTIFY_BUFFER: usize = 8 << 20;

/// Requests of one batch in flight at once (the kernel handles each in order).
const IN_FLIGHT: usize = 256;

impl Netlink {
    /// A connection in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        // The socket is made here, in the calling thread's namespace.
        let (conn, handle, events) = {
            let _entered = rt.enter();
            rtnetlink::new_connection()?
        };
        let mut dumps = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        dumps.bind_auto()?;
        Ok(Self {
            rt: Some(rt),
            handle,
            unspawned: Some(conn),
            events,
            groups: Vec::new(),
            dumps,
            dump_seq: 0,
            nexthop_cache: None,
        })
    }

    /// A connection in the network namespace at `path` (such as `/var/run/netns/x` or
    /// `/proc/PID/ns/net`), made on a thread of its own that is discarded afterwards.
    pub fn in_netns(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Netns {
            path: path.display().to_string(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        Self::in_netns_file(&file, path)
    }

    /// Like [`Self::in_netns`] with the namespace already open. The connection is made
    /// on a thread of our own that enters the namespace and ends right after.
    pub fn in_netns_file(file: &File, path: &Path) -> Result<Self> {
        std::thread::scope(|s| {
            s.spawn(|| Self::enter_netns_on_this_thread(file, path))
                .join()
                .unwrap_or_else(|_| Err(Error::Decode("namespace thread panicked".into())))
        })
    }

    /// Moves the *calling thread* into the network namespace `file` and returns a
    /// connection there. The thread stays in that namespace: call this only on a thread
    /// you own and end afterwards, never on a pooled or main thread that does host work
    /// later.
    pub fn enter_netns_on_this_thread(file: &File, path: &Path) -> Result<Self> {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
            Error::Netns {
                path: path.display().to_string(),
                errno,
            }
        })?;
        Self::new()
    }

    /// Runs `f` on the *calling thread* inside the network namespace `file`, then moves
    /// the thread back to the namespace it was in. What `f` opens there stays there: a
    /// [`Netlink`] made inside keeps working on that namespace from anywhere, a file
    /// under `/proc/sys/net` names that namespace's settings.
    ///
    /// Only for a thread nothing else relies on meanwhile: a single-threaded program's
    /// main thread (the CNI plugin), a thread of your own. When the way back fails the
    /// process aborts: it must not go on doing host work in another namespace.
    pub fn on_this_thread_in_netns<T>(
        file: &File,
        path: &Path,
        f: impl FnOnce() -> T,
    ) -> Result<T> {
        let netns_err = |errno| Error::Netns {
            path: path.display().to_string(),
            errno,
        };
        let home = File::open("/proc/thread-self/ns/net").map_err(|e| Error::Netns {
            path: "/proc/thread-self/ns/net".into(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(netns_err)?;
        /// Takes the thread home when `f` returns or unwinds.
        struct Home(File);
        impl Drop for Home {
            fn drop(&mut self) {
                if let Err(errno) = nix::sched::setns(&self.0, nix::sched::CloneFlags::CLONE_NEWNET)
                {
                    eprintln!(
                        "cannot return to the original network namespace ({errno}); aborting"
                    );
                    std::process::abort();
                }
            }
        }
        let _home = Home(home);
        Ok(f())
    }

    /// Joins rtnetlink multicast `group` (RTNLGRP_*) to receive notifications. Before
    /// the first request this joins on the connection's own socket; afterwards on a new
    /// socket made in the *calling thread's* namespace (call it on a thread in this
    /// connection's namespace), whose notifications then replace the first socket's.
    pub fn subscribe(&mut self, group: u32) -> Result<()> {
        if self.groups.contains(&group) {
            return Ok(());
        }
        let mut groups = self.groups.clone();
        groups.push(group);
        if let Some(conn) = self.unspawned.as_mut() {
            join_groups(conn, &groups)?;
        } else {
            let rt = self.rt.as_ref().ok_or_else(closed)?;
            let (mut conn, _handle, events) = {
                let _entered = rt.enter();
                rtnetlink::new_connection()?
            };
            join_groups(&mut conn, &groups)?;
            rt.spawn(conn);
            self.events = events;
        }
        self.groups = groups;
        Ok(())
    }

    /// Sets the receive buffer of a subscribed connection (before its first request;
    /// the kernel doubles it and caps it at net.core.rmem_max). A small buffer suits a
    /// caller that only asks whether anything changed ([`Netlink::routes_changed`]):
    /// a burst overflows it, which reads as a change, and never waits in memory.
    pub fn set_notify_buffer(&mut self, bytes: usize) -> Result<()> {
        let conn = self.unspawned.as_mut().ok_or_else(|| {
            Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the receive buffer is set before the first request",
            ))
        })?;
        conn.socket_mut().socket_mut().set_rx_buf_sz(bytes)?;
        Ok(())
    }

    /// Runs `f` to completion on this connection's runtime: directly, or on a scoped
    /// thread when the caller is itself inside a tokio runtime (runtimes do not nest).
    fn block_on<F>(
        rt: &Runtime,
        unspawned: &mut Option<Connection<RouteNetlinkMessage>>,
        f: F,
    ) -> F::Output
    where
        F: Future + Send,
        F::Output: Send,
    {
        if let Some(conn) = unspawned.take() {
            rt.spawn(conn);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return rt.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| rt.block_on(f))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Sends a request and collects its replies until the ack or the end of a dump.
    /// `op` names the request in errors.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let handle = self.handle.clone();
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let flags = if dump { flags } else { flags | NLM_F_ACK };
        let rt = self.rt.as_ref().ok_or_else(closed)?;
        match Self::block_on(rt, &mut self.unspawned, exchange(handle, msg, flags)) {
            Ok(replies) => Ok(replies),
            Err(Refused::Errno(errno)) => Err(Error::Kernel { op: op(), errno }),
            Err(Refused::Closed) => Err(closed()),
        }
    }

    /// Asks for the loopback link and waits at most `wait` for the answer: every
    /// message the kernel queued on this socket before it has been read by then.
    /// Returns whether it was answered in time.
    pub(crate) fn barrier(&mut self, wait: std::time::Duration) -> Result<bool> {
        let handle = self.handle.clone();
        let rt = self.rt.as_ref().ok_or_else(closed)?;
        let asked = link::get_request(link::by_index(1));
        let answer = Self::block_on(rt, &mut self.unspawned, async move {
            tokio::time::timeout(wait, exchange(handle, asked, NLM_F_ACK)).await
        });
        match answer {
            Err(_) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(Refused::Closed)) => Err(closed()),
            Ok(Err(Refused::Errno(errno))) => Err(Error::Kernel {
                op: "looking up the loopback link".into(),
                errno,
            }),
        }
    }

    /// Sends many requests, up to 256 in flight at once on this connection, and waits
    /// for every ack. Every request is attempted; returns the index and error of each
    /// one the kernel refused.
    pub(crate) fn request_many(
        &mut self,
        msgs: Vec<RouteNetlinkMessage>,
        flags: u16,
        op: impl Fn(usize) -> String,
    ) -> Vec<(usize, Error)> {
        let count = msgs.len();
        let handle = &self.handle;
        let all = async move {
            stream::iter(msgs.into_iter().enumerate())
                .map(|(i, msg)| {
                    let handle = handle.clone();
                    async move { (i, exchange(handle, msg, flags | NLM_F_ACK).await) }
                })
                .buffer_unordered(IN_FLIGHT)
                .filter_map(|(i, r)| async move { r.err().map(|e| (i, e)) })
                .collect::<Vec<_>>()
                .await
        };
        let refused = match self.rt.as_ref() {
            Some(rt) => Self::block_on(rt, &mut self.unspawned, all),
            None => (0..count).map(|i| (i, Refused::Closed)).collect(),
        };
        let mut errors: Vec<(usize, Error)> = refused
            .into_iter()
            .map(|(i, r)| {
                let e = match r {
                    Refused::Errno(errno) => Error::Kernel { op: op(i), errno },
                    Refused::Closed => closed(),
                };
                (i, e)
            })
            .collect();
        errors.sort_by_key(|(i, _)| *i);
        errors
    }

    /// The next notifications of the joined groups, waiting at most `timeout` for the
    /// first; none when nothing arrived (or nothing was joined).
    pub(crate) fn notifications(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        if self.groups.is_empty() {
            return Ok(Vec::new());
        }
        let rt = self.rt.as_ref().ok_or_else(closed)?;
        let events = &mut self.events;
        let out = Self::block_on(rt, &mut self.unspawned, async move {
            let first = tokio::time::timeout(timeout, events.next()).await;
            let mut out = Vec::new();
            match first {
                Err(_) => return Ok(out),
                Ok(None) => return Err(closed()),
                Ok(Some((m, _))) => out.push(m),
            }
            while let Ok((m, _)) = events.try_recv() {
                out.push(m);
            }
            Ok(out)
        });
        Ok(out?
            .into_iter()
            .filter_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(m) => Some(m),
                _ => None,
            })
            .collect())
    }
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // Never blocks, so a Netlink may be dropped inside async code too.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Why one request failed.
enum Refused {
    /// The kernel answered with this errno.
    Errno(Errno),
    /// The connection is gone.
    Closed,
}

/// Binds the connection's socket and joins `groups` (joining twice is harmless): the
/// kernel delivers multicast only to a bound socket.
fn join_groups(conn: &mut Connection<RouteNetlinkMessage>, groups: &[u32]) -> Result<()> {
    let socket = conn.socket_mut().socket_mut();
    let mut bound = SocketAddr::new(0, 0);
    socket.get_address(&mut bound)?;
    if bound.port_number() == 0 {
        socket.bind_auto()?;
    }
    for g in groups {
        socket.add_membership(*g)?;
    }
    // Room for a burst (thousands of routes added at once) before notifications are
    // dropped; the kernel caps it at net.core.rmem_max.
    socket.set_rx_buf_sz(NOTIFY_BUFFER)?;
    Ok(())
}

fn closed() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the netlink connection closed",
    ))
}

/// One request and its replies: the inner messages until the ack or the end of a dump,
/// or the kernel's errno.
async fn exchange(
    mut handle: rtnetlink::Handle,
    msg: RouteNetlinkMessage,
    flags: u16,
) -> std::result::Result<Vec<RouteNetlinkMessage>, Refused> {
    let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
    nl.header.flags = NLM_F_REQUEST | flags;
    let mut replies = handle.request(nl).map_err(|_| Refused::Closed)?;
    let mut out = Vec::new();
    while let Some(reply) = replies.next().await {
        match reply.payload {
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(Refused::Errno(Errno::from_raw(-code.get())));
                }
            }
            NetlinkPayload::InnerMessage(inner) => out.push(inner),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_are_typed() {
        let err = |errno| Error::Kernel {
            op: "adding a route".into(),
            errno,
        };
        assert!(err(Errno::EEXIST).is_exists());
        assert!(!err(Errno::EEXIST).is_not_found());
        for e in [
            Errno::ENODEV,
            Errno::ESRCH,
            Errno::ENOENT,
            Errno::EADDRNOTAVAIL,
        ] {
            assert!(err(e).is_not_found(), "{e}");
        }
        assert!(!Error::Decode("x".into()).is_exists());
        assert_eq!(err(Errno::EPERM).errno(), Some(Errno::EPERM));
        assert_eq!(
            err(Errno::EEXIST).to_string(),
            "adding a route: EEXIST: File exists"
        );
    }
}
