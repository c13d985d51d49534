//! A small synchronous rtnetlink client: links, addresses and routes, one socket per
//! network namespace.
//!
//! Synchronous on purpose: the CNI plugin runs for a few milliseconds per pod and needs
//! no async runtime, and the daemon calls it from one thread. A socket belongs to the
//! namespace it was created in, so [`Netlink::in_netns`] creates it on a short-lived
//! thread that enters the namespace and is then discarded: no thread that keeps running
//! ever changes namespace.
//!
//! This crate must never import Kubernetes types nor an async runtime: podnet-cni links
//! it, and it must stay a small synchronous client.

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
pub use route::{Address, Dad, Route, RouteFilter};

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

    /// Receives one datagram and decodes every message in it. The one receive loop of
    /// this crate: requests, batches and notifications all read through it.
    fn recv_batch(&mut self) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        decode_batch(&self.buf[..n])
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
            for msg in self.recv_batch()? {
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
                    // Non-dump requests answer with one message, then the ack.
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    _ => {}
                }
            }
        }
    }

    /// Sends many requests in few `send(2)` calls (the kernel handles each message of a
    /// send in order) and waits for every ack. Every request is attempted; returns the
    /// index and error of each one the kernel refused. Much cheaper than one round trip
    /// each.
    pub(crate) fn request_many(
        &mut self,
        msgs: Vec<RouteNetlinkMessage>,
        flags: u16,
        op: impl Fn(usize) -> String,
    ) -> Vec<(usize, Error)> {
        const CHUNK: usize = 256;
        let mut errors = Vec::new();
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
            let base = chunk_no * CHUNK;
            if let Err(e) = self.socket.send(&buf, 0) {
                // Nothing of this chunk reached the kernel: each request failed.
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                errors.extend((0..chunk.len()).map(|i| {
                    (
                        base + i,
                        Error::Kernel {
                            op: op(base + i),
                            errno,
                        },
                    )
                }));
                continue;
            }
            let mut pending = chunk.len();
            while pending > 0 {
                let batch = match self.recv_batch() {
                    Ok(b) => b,
                    Err(e) => {
                        // The socket broke: the unacknowledged requests count as failed.
                        let errno = match &e {
                            Error::Io(io) => Errno::from_raw(io.raw_os_error().unwrap_or(0)),
                            _ => Errno::EIO,
                        };
                        for i in chunk.len() - pending..chunk.len() {
                            errors.push((
                                base + i,
                                Error::Kernel {
                                    op: op(base + i),
                                    errno,
                                },
                            ));
                        }
                        break;
                    }
                };
                for msg in batch {
                    let seq = msg.header.sequence_number.wrapping_sub(first_seq) as usize;
                    if seq >= chunk.len() {
                        continue;
                    }
                    if let NetlinkPayload::Error(e) = msg.payload {
                        pending -= 1;
                        if let Some(code) = e.code {
                            errors.push((
                                base + seq,
                                Error::Kernel {
                                    op: op(base + seq),
                                    errno: Errno::from_raw(-code.get()),
                                },
                            ));
                        }
                    }
                }
            }
        }
        errors
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
        Ok(self
            .recv_batch()?
            .into_iter()
            .filter_map(|m| match m.payload {
                NetlinkPayload::InnerMessage(m) => Some(m),
                _ => None,
            })
            .collect())
    }
}

/// Decodes every netlink message of one datagram. A message whose header claims zero
/// length, or more than the datagram holds, is an error: looping on it would never end,
/// and skipping it would lose the messages after it.
pub(crate) fn decode_batch(buf: &[u8]) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < buf.len() {
        let rest = &buf[offset..];
        let len = rest
            .get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| Error::Decode(format!("{} trailing bytes", rest.len())))?;
        if len < 16 || len > rest.len() {
            return Err(Error::Decode(format!(
                "netlink message of length {len} with {} bytes left",
                rest.len()
            )));
        }
        let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
            .map_err(|e| Error::Decode(e.to_string()))?;
        out.push(msg);
        // Messages are 4-byte aligned within a datagram.
        offset += len.next_multiple_of(4);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One netlink message: header (length, type, flags, sequence, port) and payload,
    /// native-endian as the kernel writes it.
    fn message(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(16 + payload.len()).unwrap_or(u32::MAX);
        let mut out = Vec::new();
        out.extend(len.to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(0u16.to_ne_bytes());
        out.extend(seq.to_ne_bytes());
        out.extend(0u32.to_ne_bytes());
        out.extend(payload);
        out
    }

    /// An NLMSG_ERROR (type 2) answering request `seq` with `errno` (0: the ack).
    fn error(seq: u32, errno: i32) -> Vec<u8> {
        let mut payload = (-errno).to_ne_bytes().to_vec();
        payload.extend(message(24, seq, &[])); // the request's header
        message(2, seq, &payload)
    }

    #[test]
    fn acks_errors_and_the_end_of_a_dump_decode() {
        let mut buf = error(7, 0);
        buf.extend(error(8, Errno::EEXIST as i32));
        buf.extend(message(3, 9, &0i32.to_ne_bytes())); // NLMSG_DONE
        let msgs = decode_batch(&buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(msgs.len(), 3);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.header.sequence_number).collect();
        assert_eq!(seqs, [7, 8, 9]);
        match &msgs[0].payload {
            NetlinkPayload::Error(e) => assert_eq!(e.code, None, "an ack"),
            other => panic!("not an ack: {other:?}"),
        }
        match &msgs[1].payload {
            NetlinkPayload::Error(e) => {
                assert_eq!(e.code.map(|c| -c.get()), Some(Errno::EEXIST as i32));
            }
            other => panic!("not an error: {other:?}"),
        }
        assert!(matches!(msgs[2].payload, NetlinkPayload::Done(_)));
    }

    #[test]
    fn messages_are_read_at_four_byte_alignment() {
        // A 21-byte message padded to 24, then an ack.
        let mut buf = message(3, 1, &[0, 0, 0, 0, 0xaa]);
        buf.extend([0, 0, 0]);
        buf.extend(error(2, 0));
        let msgs = decode_batch(&buf).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].header.sequence_number, 2);
    }

    #[test]
    fn a_zero_length_short_or_overlong_message_is_an_error_not_a_loop() {
        let mut zero = message(3, 1, &0i32.to_ne_bytes());
        zero[..4].copy_from_slice(&0u32.to_ne_bytes());
        let mut overlong = message(3, 1, &0i32.to_ne_bytes());
        overlong[..4].copy_from_slice(&4096u32.to_ne_bytes());
        let mut short_header = error(1, 0);
        short_header[..4].copy_from_slice(&8u32.to_ne_bytes());
        let mut trailing = error(1, 0);
        trailing.extend([1, 2]);
        for (name, buf) in [
            ("zero length", zero),
            ("longer than the datagram", overlong),
            ("shorter than a header", short_header),
            ("trailing bytes", trailing),
        ] {
            assert!(
                matches!(decode_batch(&buf), Err(Error::Decode(_))),
                "{name}: {:?}",
                decode_batch(&buf)
            );
        }
        assert!(decode_batch(&[]).is_ok_and(|m| m.is_empty()));
    }

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
