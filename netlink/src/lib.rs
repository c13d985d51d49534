//! A small synchronous rtnetlink client: links, addresses and routes, one socket per
//! network namespace.
//!
//! Synchronous on purpose: the CNI plugin runs for a few milliseconds per pod and needs
//! no async runtime, and the daemon calls it from one thread. A socket belongs to the
//! namespace it was created in, so [`Netlink::in_netns`] creates it on a short-lived
//! thread that enters the namespace and is then discarded: no thread that keeps running
//! ever changes namespace.

mod link;
mod route;

use std::fs::File;
use std::path::Path;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;

pub use link::{LinkInfo, LinkKind};
pub use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
pub use route::{Route, RouteFilter};

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
}

/// A result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// An rtnetlink socket bound to one network namespace.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// Receive buffer: large enough for any dump batch the kernel sends (it caps a batch
/// at 32 KiB unless the reader offers more), so one recv(2) per batch suffices.
const RECV_BUF: usize = 64 * 1024;

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        Ok(Self::from_socket(Self::socket()?))
    }

    fn socket() -> Result<Socket> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(socket)
    }

    fn from_socket(socket: Socket) -> Self {
        Self {
            socket,
            seq: 0,
            buf: vec![0; RECV_BUF],
        }
    }

    /// A socket in the network namespace at `path` (such as `/var/run/netns/x` or
    /// `/proc/PID/ns/net`), made on a thread of its own that is discarded afterwards.
    pub fn in_netns(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::Netns {
            path: path.display().to_string(),
            errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })?;
        Self::in_netns_file(&file, path)
    }

    /// Like [`Self::in_netns`] with the namespace already open. The socket is made on a
    /// thread of our own that enters the namespace and ends right after.
    pub fn in_netns_file(file: &File, path: &Path) -> Result<Self> {
        std::thread::scope(|s| {
            s.spawn(|| Self::enter_netns_on_this_thread(file, path))
                .join()
                .unwrap_or_else(|_| Err(Error::Decode("namespace thread panicked".into())))
        })
    }

    /// Moves the *calling thread* into the network namespace `file` and returns a socket
    /// there. The thread stays in that namespace: call this only on a thread you own and
    /// end afterwards, never on a pooled or main thread that does host work later.
    pub fn enter_netns_on_this_thread(file: &File, path: &Path) -> Result<Self> {
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|errno| {
            Error::Netns {
                path: path.display().to_string(),
                errno,
            }
        })?;
        Self::new()
    }

    /// Joins rtnetlink multicast `group` (RTNLGRP_*) to receive notifications.
    pub fn subscribe(&mut self, group: u32) -> Result<()> {
        Ok(self.socket.add_membership(group)?)
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        nl.header.flags = NLM_F_REQUEST | flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf[..]);
        self.socket.send(&buf, 0)?;
        Ok(self.seq)
    }

    /// Sends a request and collects its replies until the ack or the end of a dump.
    /// `op` names the request in errors.
    pub(crate) fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce() -> String,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let seq = self.send(msg, if dump { flags } else { flags | NLM_F_ACK })?;
        let mut out = Vec::new();
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let buf = &self.buf[..n];
            let mut offset = 0;
            while offset < buf.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                    .map_err(|e| Error::Decode(e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode("zero-length netlink message".into()));
                }
                offset += len;
                if msg.header.sequence_number != seq {
                    continue; // a notification or a stale reply
                }
                match msg.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(code) => Err(Error::Kernel {
                                op: op(),
                                errno: Errno::from_raw(-code.get()),
                            }),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::InnerMessage(inner) => {
                        out.push(inner);
                        if !dump {
                            // Non-dump requests answer with one message, then the ack.
                            continue;
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Sends many requests in few `send(2)` calls (the kernel handles each message of a
    /// send in order) and waits for every ack. Returns the first error, after reading
    /// all acks of the chunk it belongs to. Much cheaper than one round trip each.
    pub(crate) fn request_many(
        &mut self,
        msgs: Vec<RouteNetlinkMessage>,
        flags: u16,
        op: impl Fn(usize) -> String,
    ) -> Result<()> {
        const CHUNK: usize = 256;
        let mut first_err = None;
        for (chunk_no, chunk) in msgs.chunks(CHUNK).enumerate() {
            let mut buf = Vec::new();
            let first_seq = self.seq.wrapping_add(1);
            for msg in chunk {
                self.seq = self.seq.wrapping_add(1);
                let mut nl = NetlinkMessage::new(
                    NetlinkHeader::default(),
                    NetlinkPayload::InnerMessage(msg.clone()),
                );
                nl.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
                nl.header.sequence_number = self.seq;
                nl.finalize();
                let start = buf.len();
                buf.resize(start + nl.buffer_len(), 0);
                nl.serialize(&mut buf[start..]);
            }
            self.socket.send(&buf, 0)?;
            let mut pending = chunk.len();
            while pending > 0 {
                let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
                let mut offset = 0;
                while offset < n {
                    let msg =
                        NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                            .map_err(|e| Error::Decode(e.to_string()))?;
                    let len = msg.header.length as usize;
                    if len == 0 {
                        return Err(Error::Decode("zero-length netlink message".into()));
                    }
                    offset += len;
                    let seq = msg.header.sequence_number.wrapping_sub(first_seq) as usize;
                    if seq >= chunk.len() {
                        continue;
                    }
                    if let NetlinkPayload::Error(e) = msg.payload {
                        pending -= 1;
                        if let (Some(code), None) = (e.code, &first_err) {
                            first_err = Some(Error::Kernel {
                                op: op(chunk_no * CHUNK + seq),
                                errno: Errno::from_raw(-code.get()),
                            });
                        }
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// Receives the next batch of notifications, waiting at most `timeout`.
    pub(crate) fn notifications(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        use std::os::fd::AsFd;
        let mut fds = [nix::poll::PollFd::new(
            self.socket.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ms = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) => return Ok(Vec::new()),
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(Error::Io(e.into())),
        }
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        let buf = &self.buf[..n];
        let mut out = Vec::new();
        let mut offset = 0;
        while offset < buf.len() {
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[offset..])
                .map_err(|e| Error::Decode(e.to_string()))?;
            if msg.header.length == 0 {
                break;
            }
            offset += msg.header.length as usize;
            if let NetlinkPayload::InnerMessage(m) = msg.payload {
                out.push(m);
            }
        }
        Ok(out)
    }
}
