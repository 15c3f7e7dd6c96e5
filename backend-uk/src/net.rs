//! The network stack: one smoltcp interface over virtio-net, pools of listening TCP sockets per
//! port (smoltcp has no accept backlog, so several sockets listen on the same port and are
//! replaced as connections arrive), async TCP streams and outgoing connections.
//!
//! All state lives in one global behind a spin lock that is never held across an `.await` or
//! while a task runs, so the single CPU never contends for it. Tasks register smoltcp socket
//! wakers; [`poll_ingress`] and [`poll_egress`] (called by the kernel loop) move packets and
//! wake them.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::task::{Poll, Waker};

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::socket::{dhcpv4, tcp};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpCidr, Ipv4Address, Ipv4Cidr};
use spinning_top::Spinlock;

use crate::cmdline::IpConfig;
use crate::drivers::virtio::NetDevice;

/// Receive buffer per TCP socket.
const RX_BUF: usize = 16 * 1024;
/// Transmit buffer per TCP socket.
const TX_BUF: usize = 16 * 1024;
/// Most TCP sockets (listening + connected + closing).
pub const MAX_SOCKETS: usize = runtime_abi::node::UK_MAX_SOCKETS;
const _: () = assert!((RX_BUF + TX_BUF) as u64 == runtime_abi::node::UK_SOCKET_BUFFER_BYTES);

/// The socket cap for a heap of `heap_bytes` ([`runtime_abi::node::uk_socket_cap`], which a debug
/// node under this node's resource envelope applies too).
pub fn socket_cap(heap_bytes: u64) -> usize {
    runtime_abi::node::uk_socket_cap(heap_bytes)
}
/// A closed stream's socket is aborted if the peer has not finished closing after this long.
const LINGER_MS: u64 = 5_000;

/// Network errors seen by tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetError {
    /// The stack is not initialised.
    Down,
    /// The connection was reset or closed before the operation completed.
    Closed,
    /// No socket could be created (too many connections).
    NoSockets,
    /// A connection attempt failed.
    Connect(String),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            NetError::Down => f.write_str("network is down"),
            NetError::Closed => f.write_str("connection closed"),
            NetError::NoSockets => f.write_str("too many connections"),
            NetError::Connect(e) => write!(f, "connect failed: {e}"),
        }
    }
}

struct ListenPool {
    port: u16,
    backlog: usize,
    /// Sockets listening or mid-handshake.
    waiting: Vec<SocketHandle>,
    /// Established connections not yet taken by `accept`.
    accepted: VecDeque<SocketHandle>,
    waker: Option<Waker>,
}

struct NetStack {
    iface: Interface,
    device: NetDevice,
    sockets: SocketSet<'static>,
    dhcp: Option<SocketHandle>,
    pools: Vec<ListenPool>,
    released: Vec<(SocketHandle, u64)>,
    tcp_count: usize,
    max_sockets: usize,
    next_port: u16,
    address: Option<Ipv4Addr>,
    now_ms: u64,
}

/// Boxed, so the static is all zeroes (.bss) instead of 4 KiB of image (.data).
static NET: Spinlock<Option<alloc::boxed::Box<NetStack>>> = Spinlock::new(None);

fn new_tcp_socket() -> tcp::Socket<'static> {
    let mut s = tcp::Socket::new(
        tcp::SocketBuffer::new(vec![0; RX_BUF]),
        tcp::SocketBuffer::new(vec![0; TX_BUF]),
    );
    s.set_nagle_enabled(false);
    s.set_ack_delay(None);
    s.set_timeout(Some(Duration::from_secs(60)));
    s
}

fn to_smol(a: Ipv4Addr) -> Ipv4Address {
    Ipv4Address::from_octets(a.octets())
}

/// Brings the interface up.
pub fn init(device: NetDevice, ip: IpConfig, seed: u64, now_ms: u64) {
    let mut device = device;
    let mac = EthernetAddress(device.mac());
    let mut config = Config::new(HardwareAddress::Ethernet(mac));
    config.random_seed = seed;
    let mut iface = Interface::new(config, &mut device, Instant::from_millis(now_ms as i64));
    let mut sockets = SocketSet::new(Vec::new());
    let mut dhcp = None;
    let mut address = None;
    match ip {
        IpConfig::Dhcp => dhcp = Some(sockets.add(dhcpv4::Socket::new())),
        IpConfig::Static {
            addr,
            prefix,
            gateway,
        } => {
            iface.update_ip_addrs(|addrs| {
                let _ = addrs.push(IpCidr::Ipv4(Ipv4Cidr::new(to_smol(addr), prefix)));
            });
            if let Some(gw) = gateway {
                let _ = iface.routes_mut().add_default_ipv4_route(to_smol(gw));
            }
            address = Some(addr);
        }
    }
    *NET.lock() = Some(alloc::boxed::Box::new(NetStack {
        iface,
        device,
        sockets,
        dhcp,
        pools: Vec::new(),
        released: Vec::new(),
        tcp_count: 0,
        max_sockets: socket_cap(crate::mm::heap::size()),
        next_port: 49152 + (seed % 8192) as u16,
        address,
        now_ms,
    }));
}

/// Announces the interface's address with a gratuitous ARP request (RFC 5227, 3): a host or
/// bridge already trying to reach it (a client polling for the node to come up) learns its MAC
/// now instead of at its next ARP retry, up to a second later. Nothing to announce while DHCP is
/// pending.
pub fn announce() {
    let mut guard = NET.lock();
    let Some(net) = guard.as_deref_mut() else {
        return;
    };
    let Some(ip) = net.address else {
        return;
    };
    let mac = net.device.mac();
    let mut frame = [0u8; 42];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&mac);
    // EtherType ARP; Ethernet/IPv4, request; sender = target = our address.
    frame[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    frame[22..28].copy_from_slice(&mac);
    frame[28..32].copy_from_slice(&ip.octets());
    frame[38..42].copy_from_slice(&ip.octets());
    net.device.send_frame(&frame);
    net.device.flush();
}

/// The configured IPv4 address (None while DHCP is pending).
pub fn address() -> Option<Ipv4Addr> {
    NET.lock().as_deref().and_then(|n| n.address)
}

/// Acknowledges a NIC interrupt.
pub fn ack_interrupt() {
    if let Some(net) = NET.lock().as_deref() {
        net.device.ack_interrupt();
    }
}

/// Enables NIC interrupts.
pub fn enable_interrupts() {
    if let Some(net) = NET.lock().as_deref() {
        net.device.enable_interrupts();
    }
}

/// Arms the NIC's receive interrupt for the next frame (before halting; the caller then checks
/// [`rx_pending`] once more). The NIC does not interrupt otherwise.
pub fn arm_interrupts() {
    if let Some(net) = NET.lock().as_deref() {
        net.device.arm_interrupts();
    }
}

/// Whether a frame is waiting in the receive ring.
pub fn rx_pending() -> bool {
    NET.lock().as_deref().is_some_and(|n| n.device.can_recv())
}

/// TCP sockets open (listening, connected, closing).
pub fn tcp_sockets() -> usize {
    NET.lock().as_deref().map_or(0, |n| n.tcp_count)
}

/// Frames received and sent so far.
pub fn frame_counters() -> (u64, u64) {
    NET.lock()
        .as_ref()
        .map(|n| *n.device.counters.borrow())
        .unwrap_or((0, 0))
}

impl NetStack {
    fn add_tcp(&mut self) -> Option<SocketHandle> {
        if self.tcp_count >= self.max_sockets {
            return None;
        }
        self.tcp_count += 1;
        Some(self.sockets.add(new_tcp_socket()))
    }

    fn remove_tcp(&mut self, handle: SocketHandle) {
        self.sockets.remove(handle);
        self.tcp_count -= 1;
    }

    fn maintain_pools(&mut self) {
        for i in 0..self.pools.len() {
            let port = self.pools[i].port;
            let mut listening = 0;
            let mut keep = Vec::with_capacity(self.pools[i].waiting.len());
            let waiting = core::mem::take(&mut self.pools[i].waiting);
            let mut got = false;
            for h in waiting {
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                match s.state() {
                    tcp::State::Listen => {
                        listening += 1;
                        keep.push(h);
                    }
                    tcp::State::SynReceived => keep.push(h),
                    tcp::State::Closed | tcp::State::TimeWait => {
                        s.abort();
                        if s.listen(port).is_ok() {
                            listening += 1;
                        }
                        keep.push(h);
                    }
                    _ => {
                        self.pools[i].accepted.push_back(h);
                        got = true;
                    }
                }
            }
            while listening < self.pools[i].backlog {
                let Some(h) = self.add_tcp() else { break };
                if self.sockets.get_mut::<tcp::Socket>(h).listen(port).is_err() {
                    self.remove_tcp(h);
                    break;
                }
                keep.push(h);
                listening += 1;
            }
            self.pools[i].waiting = keep;
            if got && let Some(w) = self.pools[i].waker.take() {
                w.wake();
            }
        }
    }

    fn reap(&mut self) {
        let now = self.now_ms;
        let released = core::mem::take(&mut self.released);
        for (h, since) in released {
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done || now.saturating_sub(since) > LINGER_MS {
                s.abort();
                self.remove_tcp(h);
            } else {
                self.released.push((h, since));
            }
        }
    }

    fn poll_dhcp(&mut self) {
        let Some(h) = self.dhcp else { return };
        let event = self.sockets.get_mut::<dhcpv4::Socket>(h).poll();
        match event {
            Some(dhcpv4::Event::Configured(config)) => {
                let cidr = config.address;
                self.iface.update_ip_addrs(|addrs| {
                    addrs.clear();
                    let _ = addrs.push(IpCidr::Ipv4(cidr));
                });
                if let Some(router) = config.router {
                    let _ = self.iface.routes_mut().add_default_ipv4_route(router);
                } else {
                    self.iface.routes_mut().remove_default_ipv4_route();
                }
                let octets = cidr.address().octets();
                self.address = Some(Ipv4Addr::from(octets));
                crate::kprintln!("net: dhcp address {cidr} router {:?}", config.router);
            }
            Some(dhcpv4::Event::Deconfigured) => {
                self.iface.update_ip_addrs(|addrs| addrs.clear());
                self.iface.routes_mut().remove_default_ipv4_route();
                if self.address.take().is_some() {
                    crate::kprintln!("net: dhcp lease lost");
                }
            }
            None => {}
        }
    }
}

/// Takes in every frame waiting and updates sockets (waking the tasks that wait on them).
/// Returns whether a socket changed state.
///
/// The kernel loop runs the woken tasks before [`poll_egress`], so the answer a task writes
/// leaves in the same segment as the ACK of the request it answers (one frame, one virtio
/// send, instead of a bare ACK and then the answer).
pub fn poll_ingress(now_ms: u64) -> bool {
    let mut guard = NET.lock();
    let Some(net) = guard.as_deref_mut() else {
        return false;
    };
    net.now_ms = now_ms;
    let ts = Instant::from_millis(now_ms as i64);
    net.iface.poll_maintenance(ts);
    // Ingress one frame at a time, refilling the listening pools whenever a socket changed
    // state, so a burst of SYNs larger than a pool's backlog is not answered with resets.
    let mut changed = false;
    loop {
        let NetStack {
            iface,
            device,
            sockets,
            ..
        } = net;
        match iface.poll_ingress_single(ts, device, sockets) {
            PollIngressSingleResult::None => break,
            PollIngressSingleResult::PacketProcessed => {}
            PollIngressSingleResult::SocketStateChanged => {
                changed = true;
                net.maintain_pools();
            }
        }
    }
    net.maintain_pools();
    // Receive buffers given back (and any frame answered on ingress): one doorbell per batch.
    net.device.flush();
    changed
}

/// Sends what sockets have to send (data, ACKs, SYN-ACKs, retransmissions), runs DHCP and
/// recycles closed sockets. Returns whether anything was sent.
pub fn poll_egress(now_ms: u64) -> bool {
    let mut guard = NET.lock();
    let Some(net) = guard.as_deref_mut() else {
        return false;
    };
    net.now_ms = now_ms;
    let ts = Instant::from_millis(now_ms as i64);
    let NetStack {
        iface,
        device,
        sockets,
        ..
    } = net;
    let sent = iface.poll_egress(ts, device, sockets) != PollResult::None;
    net.poll_dhcp();
    net.maintain_pools();
    net.reap();
    net.device.flush();
    sent
}

/// Milliseconds until the stack needs [`poll_egress`] again (None = only when packets arrive).
pub fn poll_delay_ms(now_ms: u64) -> Option<u64> {
    let mut guard = NET.lock();
    let net = guard.as_deref_mut()?;
    net.iface
        .poll_delay(Instant::from_millis(now_ms as i64), &net.sockets)
        .map(|d| d.total_millis())
}

/// A pool of listening sockets on one port.
#[derive(Debug)]
pub struct Listener {
    index: usize,
    port: u16,
}

/// Starts listening on `port` with `backlog` sockets ready for simultaneous handshakes.
pub fn listen(port: u16, backlog: usize) -> Result<Listener, NetError> {
    let mut guard = NET.lock();
    let net = guard.as_deref_mut().ok_or(NetError::Down)?;
    net.pools.push(ListenPool {
        port,
        backlog: backlog.max(1),
        waiting: Vec::new(),
        accepted: VecDeque::new(),
        waker: None,
    });
    net.maintain_pools();
    Ok(Listener {
        index: net.pools.len() - 1,
        port,
    })
}

impl Listener {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits for the next established connection.
    pub async fn accept(&self) -> TcpStream {
        poll_fn(|cx| {
            let mut guard = NET.lock();
            let Some(net) = guard.as_deref_mut() else {
                return Poll::Pending;
            };
            let pool = &mut net.pools[self.index];
            match pool.accepted.pop_front() {
                Some(handle) => Poll::Ready(TcpStream { handle }),
                None => {
                    pool.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

/// A TCP connection. Dropping it closes the connection gracefully (then the socket is reaped).
#[derive(Debug)]
pub struct TcpStream {
    handle: SocketHandle,
}

impl TcpStream {
    /// Reads into `buf`; `Ok(0)` at end of stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        poll_fn(|cx| {
            let mut guard = NET.lock();
            let Some(net) = guard.as_deref_mut() else {
                return Poll::Ready(Err(NetError::Down));
            };
            let s = net.sockets.get_mut::<tcp::Socket>(handle);
            if s.can_recv() {
                return Poll::Ready(s.recv_slice(buf).map_err(|_| NetError::Closed));
            }
            match s.state() {
                tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived => {}
                _ if !s.may_recv() => return Poll::Ready(Ok(0)),
                _ => {}
            }
            s.register_recv_waker(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Writes some of `data`, waiting for buffer space; the number of bytes taken.
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, NetError> {
        let handle = self.handle;
        poll_fn(|cx| {
            let mut guard = NET.lock();
            let Some(net) = guard.as_deref_mut() else {
                return Poll::Ready(Err(NetError::Down));
            };
            let s = net.sockets.get_mut::<tcp::Socket>(handle);
            if s.can_send() {
                return Poll::Ready(s.send_slice(data).map_err(|_| NetError::Closed));
            }
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {}
                _ if !s.may_send() => return Poll::Ready(Err(NetError::Closed)),
                _ => {}
            }
            s.register_send_waker(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Writes all of `data` (waits for buffer space as needed).
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), NetError> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Completes once the peer has closed its side or reset the connection: a request being
    /// handled has nobody left to answer (as hyper without half-close). Data the peer sent
    /// before is left unread.
    pub async fn peer_closed(&self) {
        let handle = self.handle;
        poll_fn(|cx| {
            let mut guard = NET.lock();
            let Some(net) = guard.as_deref_mut() else {
                return Poll::Ready(());
            };
            let s = net.sockets.get_mut::<tcp::Socket>(handle);
            if !s.may_recv()
                && !matches!(
                    s.state(),
                    tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived
                )
            {
                return Poll::Ready(());
            }
            s.register_recv_waker(cx.waker());
            Poll::Pending
        })
        .await
    }

    /// Resets the connection now (its socket is freed at the next turn of the kernel loop).
    pub fn abort(&mut self) {
        if let Some(net) = NET.lock().as_deref_mut() {
            net.sockets.get_mut::<tcp::Socket>(self.handle).abort();
        }
    }

    /// Waits until the connection is established (for outgoing connections).
    pub async fn established(&mut self) -> Result<(), NetError> {
        let handle = self.handle;
        poll_fn(|cx| {
            let mut guard = NET.lock();
            let Some(net) = guard.as_deref_mut() else {
                return Poll::Ready(Err(NetError::Down));
            };
            let s = net.sockets.get_mut::<tcp::Socket>(handle);
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Established => Poll::Ready(Ok(())),
                _ => Poll::Ready(Err(NetError::Connect(String::from(
                    "connection refused or reset",
                )))),
            }
        })
        .await
    }

    /// Remote endpoint, for logs.
    pub fn peer(&self) -> Option<String> {
        let guard = NET.lock();
        let net = guard.as_deref()?;
        net.sockets
            .get::<tcp::Socket>(self.handle)
            .remote_endpoint()
            .map(|e| alloc::format!("{e}"))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        let mut guard = NET.lock();
        if let Some(net) = guard.as_deref_mut() {
            net.sockets.get_mut::<tcp::Socket>(self.handle).close();
            let now = net.now_ms;
            net.released.push((self.handle, now));
        }
    }
}

/// Opens a TCP connection to `addr` (completes once the handshake started; use
/// [`TcpStream::established`] to wait for it).
pub fn connect(addr: SocketAddrV4) -> Result<TcpStream, NetError> {
    let mut guard = NET.lock();
    let net = guard.as_deref_mut().ok_or(NetError::Down)?;
    let handle = net.add_tcp().ok_or(NetError::NoSockets)?;
    let port = net.next_port;
    net.next_port = if net.next_port >= 65000 {
        49152
    } else {
        net.next_port + 1
    };
    let remote = (to_smol(*addr.ip()), addr.port());
    let NetStack { iface, sockets, .. } = net;
    let result = sockets
        .get_mut::<tcp::Socket>(handle)
        .connect(iface.context(), remote, port);
    if let Err(e) = result {
        net.remove_tcp(handle);
        return Err(NetError::Connect(alloc::format!("{e}")));
    }
    Ok(TcpStream { handle })
}

/// Number of TCP sockets in use.
pub fn socket_count() -> usize {
    NET.lock().as_deref().map_or(0, |n| n.tcp_count)
}
