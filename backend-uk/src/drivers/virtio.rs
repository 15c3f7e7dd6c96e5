//! virtio glue: the DMA [`Hal`] (identity-mapped heap pages), device discovery on virtio-mmio
//! (microvm) and PCI (q35, legacy port-I/O configuration access), and virtio-net as a smoltcp
//! `phy::Device`.

use alloc::alloc::{Layout, alloc_zeroed, dealloc};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ptr::NonNull;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use virtio_drivers::device::net::VirtIONetRaw;
use virtio_drivers::transport::pci::bus::{Command, ConfigurationAccess, DeviceFunction, PciRoot};
use virtio_drivers::transport::pci::{PciTransport, virtio_device_type};
use virtio_drivers::transport::{DeviceType, SomeTransport};
use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

use super::virtio_mmio::{Doorbell, Mmio, NicTransport, RX, TX};

use crate::arch::port::{inl, outl};
use crate::cmdline::MmioDevice;

/// The DMA HAL: memory is identity-mapped, so physical = virtual.
#[derive(Debug)]
pub struct KernelHal;

// SAFETY: dma_alloc returns zeroed, page-aligned, exclusively owned heap memory whose physical
// address equals its virtual address (identity paging below 4 GiB); share/unshare hand out the
// buffer's own address, which the device may access while the driver holds the buffer.
unsafe impl Hal for KernelHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("page-sized layout is valid");
        // SAFETY: the layout has non-zero size (virtio-drivers never asks for 0 pages).
        let ptr = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(ptr) else {
            crate::rt::fatal(
                crate::drivers::exit::ExitCode::OutOfMemory,
                "out of memory allocating DMA pages",
            )
        };
        (ptr.as_ptr() as u64, ptr)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        let layout = Layout::from_size_align(pages * PAGE_SIZE, PAGE_SIZE)
            .expect("page-sized layout is valid");
        // SAFETY: `vaddr` came from `dma_alloc` with the same page count, hence the same layout.
        unsafe { dealloc(vaddr.as_ptr(), layout) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as usize as *mut u8).expect("MMIO regions are never at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.as_ptr().cast::<u8>() as u64
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}

/// microvm's virtio-mmio window.
const MMIO_BASE: u64 = 0xfeb0_0000;
const MMIO_SLOT_SIZE: u64 = 0x200;
const MMIO_SLOTS: u64 = 24;

/// PCI configuration access through ports 0xcf8/0xcfc (works on q35 and i440fx).
#[derive(Debug)]
pub struct PortCam;

impl PortCam {
    fn address(df: DeviceFunction, offset: u8) -> u32 {
        0x8000_0000
            | (u32::from(df.bus) << 16)
            | (u32::from(df.device) << 11)
            | (u32::from(df.function) << 8)
            | u32::from(offset & 0xfc)
    }
}

impl ConfigurationAccess for PortCam {
    fn read_word(&self, df: DeviceFunction, offset: u8) -> u32 {
        // SAFETY: the PCI configuration mechanism #1 ports; reads have no memory effects.
        unsafe {
            outl(0xcf8, Self::address(df, offset));
            inl(0xcfc)
        }
    }

    fn write_word(&mut self, df: DeviceFunction, offset: u8, data: u32) {
        // SAFETY: configuration writes are limited by virtio-drivers to the command register and
        // BARs of the device being set up.
        unsafe {
            outl(0xcf8, Self::address(df, offset));
            outl(0xcfc, data);
        }
    }

    unsafe fn unsafe_clone(&self) -> Self {
        PortCam
    }
}

/// A discovered virtio-net device.
pub struct FoundNic {
    /// Its transport.
    pub transport: NicTransport,
    /// Its legacy PIC interrupt line, when known.
    pub irq: Option<u8>,
    /// Whether the line is level-triggered (PCI INTx) rather than edge (microvm virtio-mmio).
    pub level_triggered: bool,
    /// Where it was found (for the boot log).
    pub location: String,
}

fn probe_mmio(announced: &[MmioDevice]) -> Option<FoundNic> {
    let mut candidates: alloc::vec::Vec<(u64, Option<u32>)> =
        announced.iter().map(|d| (d.addr, Some(d.irq))).collect();
    if candidates.is_empty() {
        candidates = (0..MMIO_SLOTS)
            .map(|i| (MMIO_BASE + i * MMIO_SLOT_SIZE, None))
            .collect();
    }
    for (addr, irq) in candidates {
        // SAFETY: `addr` is a virtio-mmio slot (announced by the command line or microvm's fixed
        // window), identity-mapped, and nothing else drives it; a slot without a device reads
        // back no magic. The transport lives as long as the kernel.
        let Some(mmio) = (unsafe { Mmio::probe(addr) }) else {
            continue;
        };
        if mmio_device_type(&mmio) != DeviceType::Network {
            continue;
        }
        let irq = irq.and_then(|i| u8::try_from(i).ok()).filter(|i| *i < 16);
        let version = if mmio.legacy() { "v1" } else { "v2" };
        return Some(FoundNic {
            transport: NicTransport::mmio(mmio),
            irq,
            level_triggered: false,
            location: alloc::format!("virtio-mmio {version}@{addr:#x}"),
        });
    }
    None
}

fn mmio_device_type(mmio: &Mmio) -> DeviceType {
    virtio_drivers::transport::Transport::device_type(mmio)
}

fn probe_pci() -> Option<FoundNic> {
    // Nothing answers on 0xcfc without a PCI host bridge (microvm): the vendor reads as 0xffff.
    let mut root = PciRoot::new(PortCam);
    for bus in 0..=1u8 {
        let devices: alloc::vec::Vec<_> = root.enumerate_bus(bus).collect();
        for (df, info) in devices {
            if virtio_device_type(&info) != Some(DeviceType::Network) {
                continue;
            }
            root.set_command(
                df,
                Command::IO_SPACE | Command::MEMORY_SPACE | Command::BUS_MASTER,
            );
            let irq = (PortCam.read_word(df, 0x3c) & 0xff) as u8;
            match PciTransport::new::<KernelHal, _>(&mut root, df) {
                Ok(t) => {
                    return Some(FoundNic {
                        transport: NicTransport::other(SomeTransport::from(t)),
                        irq: (irq < 16).then_some(irq),
                        level_triggered: true,
                        location: alloc::format!("pci {df}"),
                    });
                }
                Err(e) => crate::kprintln!("virtio-pci {df}: {e}"),
            }
        }
    }
    None
}

/// Finds the first virtio-net device: virtio-mmio first, then PCI.
pub fn find_nic(announced: &[MmioDevice]) -> Option<FoundNic> {
    probe_mmio(announced).or_else(probe_pci)
}

/// Descriptors per virtqueue (receive and transmit).
const QUEUE: usize = 32;
/// Buffer size per descriptor: an Ethernet frame (1514 bytes) plus the virtio header.
const BUF_LEN: usize = 2048;

type Raw = VirtIONetRaw<KernelHal, NicTransport, QUEUE>;

/// The device and the buffers it holds.
struct Rings {
    raw: Raw,
    /// Held-back notifications and interrupt suppression (see `virtio_mmio`).
    bell: Arc<Doorbell>,
    /// Receive buffers by their descriptor token; `None` while a frame is out with smoltcp.
    rx: [Option<Box<[u8]>>; QUEUE],
    /// Transmit buffers the device is reading, by token, with the length handed over.
    tx_busy: [Option<(Box<[u8]>, usize)>; QUEUE],
    /// Transmit buffers free for the next frame.
    tx_free: Vec<Box<[u8]>>,
}

impl Rings {
    /// Takes back the transmit buffers the device is done with.
    fn reclaim_tx(&mut self) {
        while let Some(token) = self.raw.poll_transmit() {
            let Some((buf, len)) = self
                .tx_busy
                .get_mut(usize::from(token))
                .and_then(Option::take)
            else {
                crate::kprintln!("virtio-net: completion for unknown transmit token {token}");
                return;
            };
            // SAFETY: `buf[..len]` is the slice passed to `transmit_begin` for this token; it
            // stayed untouched in `tx_busy` since.
            if let Err(e) = unsafe { self.raw.transmit_complete(token, &buf[..len]) } {
                crate::kprintln!("virtio-net: completing a send failed: {e}");
            }
            // No interrupts for completed sends: buffers are taken back on the next send.
            self.bell.took(TX);
            self.tx_free.push(buf);
        }
    }

    /// Hands `buf` to the device for receiving.
    fn give_rx(&mut self, mut buf: Box<[u8]>) {
        // SAFETY: `buf` is heap memory that stays in `rx` (not read or written, not freed)
        // until the device returns its token through `poll_receive`.
        match unsafe { self.raw.receive_begin(&mut buf) } {
            Ok(token) => self.rx[usize::from(token)] = Some(buf),
            Err(e) => crate::kprintln!("virtio-net: queueing a receive buffer failed: {e}"),
        }
    }
}

/// virtio-net as a smoltcp device. Frames are sent without waiting for the device: a frame is
/// copied into a free transmit buffer and queued, and buffers come back as the device completes
/// them. The device is notified once per batch ([`NetDevice::flush`]) when it asked to be, and
/// interrupts only when armed ([`NetDevice::arm_interrupts`], just before the kernel halts).
pub struct NetDevice {
    rings: RefCell<Rings>,
    /// Frames received / sent (for the boot log and metrics).
    pub counters: RefCell<(u64, u64)>,
}

impl NetDevice {
    /// Initialises the device and fills its receive ring.
    pub fn new(transport: NicTransport) -> Result<Self, virtio_drivers::Error> {
        let bell = transport.doorbell();
        let raw = Raw::new(transport)?;
        let mut rings = Rings {
            raw,
            bell,
            rx: core::array::from_fn(|_| None),
            tx_busy: core::array::from_fn(|_| None),
            tx_free: (0..QUEUE)
                .map(|_| vec![0u8; BUF_LEN].into_boxed_slice())
                .collect(),
        };
        for _ in 0..QUEUE {
            rings.give_rx(vec![0u8; BUF_LEN].into_boxed_slice());
        }
        rings.bell.ring(RX);
        Ok(Self {
            rings: RefCell::new(rings),
            counters: RefCell::new((0, 0)),
        })
    }

    /// MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.rings.borrow().raw.mac_address()
    }

    /// Enables used-buffer interrupts.
    pub fn enable_interrupts(&self) {
        self.rings.borrow_mut().raw.enable_interrupts();
    }

    /// Rings the doorbells for the buffers queued since the last call (receive buffers given
    /// back, frames sent), where the device asked for it: one register write per batch at most.
    pub fn flush(&self) {
        let rings = self.rings.borrow();
        rings.bell.ring(RX);
        rings.bell.ring(TX);
    }

    /// Arms the receive interrupt (the next frame raises it). The kernel calls this just before
    /// it halts, then checks the ring once more; otherwise the device does not interrupt.
    pub fn arm_interrupts(&self) {
        self.rings.borrow().bell.set_interrupts(RX, true);
    }

    /// Acknowledges a device interrupt.
    pub fn ack_interrupt(&self) {
        let _ = self.rings.borrow_mut().raw.ack_interrupt();
    }

    /// Whether a received frame is waiting.
    pub fn can_recv(&self) -> bool {
        self.rings.borrow().raw.poll_receive().is_some()
    }
}

/// A received frame (the virtio header is skipped).
pub struct NetRxToken<'a> {
    dev: &'a NetDevice,
    buf: Box<[u8]>,
    frame: core::ops::Range<usize>,
}

/// Permission to send one frame.
pub struct NetTxToken<'a> {
    dev: &'a NetDevice,
}

impl phy::RxToken for NetRxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let result = f(&self.buf[self.frame.clone()]);
        self.dev.rings.borrow_mut().give_rx(self.buf);
        result
    }
}

impl NetDevice {
    /// A free transmit buffer with the virtio header written, and where the frame starts in it.
    /// (Not generic, unlike `consume`: one copy of the send path in the image.)
    fn tx_buffer(&self) -> (Box<[u8]>, usize) {
        let mut rings = self.rings.borrow_mut();
        rings.reclaim_tx();
        // Every buffer in flight: wait for the device to finish one (it is working on them).
        let mut buf = loop {
            if let Some(b) = rings.tx_free.pop() {
                break b;
            }
            rings.bell.ring(TX);
            core::hint::spin_loop();
            rings.reclaim_tx();
        };
        let hdr = match rings.raw.fill_buffer_header(&mut buf) {
            Ok(h) => h,
            Err(e) => {
                crate::kprintln!("virtio-net: header: {e}");
                0
            }
        };
        (buf, hdr)
    }

    /// Queues `buf[..total]` (from [`Self::tx_buffer`]) for sending.
    fn tx_queue(&self, buf: Box<[u8]>, total: usize) {
        let mut rings = self.rings.borrow_mut();
        // SAFETY: `buf` stays untouched in `tx_busy` until `reclaim_tx` gets its token back.
        match unsafe { rings.raw.transmit_begin(&buf[..total]) } {
            Ok(token) => {
                rings.tx_busy[usize::from(token)] = Some((buf, total));
                self.counters.borrow_mut().1 += 1;
            }
            Err(e) => {
                crate::kprintln!("virtio-net: send failed: {e}");
                rings.tx_free.push(buf);
            }
        }
    }

    /// Sends one frame built outside smoltcp (a gratuitous ARP), cut to a buffer's size.
    pub fn send_frame(&self, frame: &[u8]) {
        let (mut buf, hdr) = self.tx_buffer();
        let total = (hdr + frame.len()).min(buf.len());
        buf[hdr..total].copy_from_slice(&frame[..total - hdr]);
        self.tx_queue(buf, total);
    }
}

impl phy::TxToken for NetTxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (mut buf, hdr) = self.dev.tx_buffer();
        let total = (hdr + len).min(buf.len());
        let result = f(&mut buf[hdr..total]);
        self.dev.tx_queue(buf, total);
        result
    }
}

impl phy::Device for NetDevice {
    type RxToken<'a> = NetRxToken<'a>;
    type TxToken<'a> = NetTxToken<'a>;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let rings = self.rings.get_mut();
        let token = rings.raw.poll_receive()?;
        let Some(mut buf) = rings.rx.get_mut(usize::from(token)).and_then(Option::take) else {
            crate::kprintln!("virtio-net: completion for unknown receive token {token}");
            return None;
        };
        // SAFETY: `buf` is the buffer handed over with this token by `give_rx`, untouched since.
        let done = unsafe { rings.raw.receive_complete(token, &mut buf) };
        rings.bell.took(RX);
        let frame = match done {
            Ok((hdr, len)) => hdr..(hdr + len).min(buf.len()),
            Err(e) => {
                crate::kprintln!("virtio-net: receive failed: {e}");
                rings.give_rx(buf);
                return None;
            }
        };
        self.counters.get_mut().0 += 1;
        Some((
            NetRxToken {
                dev: self,
                buf,
                frame,
            },
            NetTxToken { dev: self },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        Some(NetTxToken { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps.max_burst_size = Some(QUEUE / 2);
        caps
    }
}
