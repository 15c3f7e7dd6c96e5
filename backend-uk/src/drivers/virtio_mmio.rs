//! The NIC's virtio transport, written for the fewest VM exits: every device register access is
//! one (~30 us on this nested host), while ring memory is free.
//!
//! - [`Mmio`]: virtio-mmio, legacy (v1, QEMU's microvm) and modern (v2, Firecracker), on a device
//!   the VM has just created: no reset, no re-read of what a reset leaves (selectors at 0, no queue
//!   in use), no config generation (a NIC's MAC does not change under us), the first 8 config
//!   bytes (MAC and link status) read once as two words, an interrupt acknowledged with one write
//!   and no status read. On a legacy device (QEMU's) QueueNumMax, GuestPageSize and QueueAlign
//!   are left at QEMU's reset values and the status is written once, with DRIVER_OK. Booting the
//!   NIC on microvm takes 12 register accesses instead of 70.
//! - [`NicTransport`] puts a [`Doorbell`] in front of it: the queue notifications virtio-drivers
//!   would send per buffer are held back and sent once per batch, only when the device asked for
//!   one (`VIRTIO_F_EVENT_IDX`'s avail_event, else the used ring's NO_NOTIFY flag), and the
//!   device's interrupts are suppressed except just before the kernel halts (used_event, else the
//!   avail ring's NO_INTERRUPT flag). PCI (q35) keeps virtio-drivers' transport and its
//!   notifications; the interrupt suppression, being ring memory, applies to it too.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use virtio_drivers::transport::{
    DeviceStatus, DeviceType, InterruptStatus, SomeTransport, Transport,
};
use virtio_drivers::{Error, PAGE_SIZE, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

const MAGIC: usize = 0x000;
const VERSION: usize = 0x004;
const DEVICE_ID: usize = 0x008;
const DEVICE_FEATURES: usize = 0x010;
const DEVICE_FEATURES_SEL: usize = 0x014;
const DRIVER_FEATURES: usize = 0x020;
const DRIVER_FEATURES_SEL: usize = 0x024;
const QUEUE_SEL: usize = 0x030;
const QUEUE_NUM_MAX: usize = 0x034;
const QUEUE_NUM: usize = 0x038;
const LEGACY_QUEUE_PFN: usize = 0x040;
const QUEUE_READY: usize = 0x044;
const QUEUE_NOTIFY: usize = 0x050;
const INTERRUPT_ACK: usize = 0x064;
const STATUS: usize = 0x070;
const QUEUE_DESC: usize = 0x080;
const QUEUE_DRIVER: usize = 0x090;
const QUEUE_DEVICE: usize = 0x0a0;
const CONFIG: usize = 0x100;

/// "virt"
pub const VIRTIO_MAGIC: u32 = 0x7472_6976;
const RING_EVENT_IDX: u64 = 1 << 29;

/// A virtio-mmio register block (v1 or v2) of a device the VM has just created.
#[derive(Debug)]
pub struct Mmio {
    base: usize,
    legacy: bool,
    device_type: DeviceType,
    /// The queue selected last (QueueSel is 0 on a new device).
    selected: u16,
    /// The first two config words, read once (MAC and link status of a NIC).
    head: core::cell::Cell<Option<[u32; 2]>>,
}

fn read_reg(addr: usize) -> u32 {
    // SAFETY: `addr` is a 4-byte aligned register of a virtio-mmio block that the caller of
    // `Mmio::probe` vouched for (identity-mapped, used by nothing else); a read of these registers
    // has no memory effects.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write_reg(addr: usize, value: u32) {
    // SAFETY: as for `read_reg`; register writes only program the device, whose DMA targets
    // are the rings and buffers virtio-drivers hands it through this transport.
    unsafe { core::ptr::write_volatile(addr as *mut u32, value) }
}

impl Mmio {
    /// The device at `base` if it is a virtio-mmio v1 or v2 block with a device behind it (3
    /// register reads).
    ///
    /// # Safety
    /// `base..base + 0x200` must be an identity-mapped MMIO window that nothing else uses for as
    /// long as the returned transport lives.
    pub unsafe fn probe(base: u64) -> Option<Self> {
        let base = base as usize;
        if read_reg(base + MAGIC) != VIRTIO_MAGIC {
            return None;
        }
        let device_type = DeviceType::try_from(read_reg(base + DEVICE_ID)).ok()?;
        let legacy = match read_reg(base + VERSION) {
            1 => true,
            2 => false,
            _ => return None,
        };
        Some(Self {
            base,
            legacy,
            device_type,
            selected: 0,
            head: core::cell::Cell::new(None),
        })
    }

    /// Whether it is a legacy (v1) device.
    pub fn legacy(&self) -> bool {
        self.legacy
    }

    fn read(&self, reg: usize) -> u32 {
        read_reg(self.base + reg)
    }

    fn write(&mut self, reg: usize, value: u32) {
        write_reg(self.base + reg, value);
    }

    fn select(&mut self, queue: u16) {
        if self.selected != queue {
            self.write(QUEUE_SEL, u32::from(queue));
            self.selected = queue;
        }
    }

    /// Writes a 64-bit address as two halves; the high half only when it is not the zero a new
    /// device holds.
    fn write_addr(&mut self, reg: usize, addr: PhysAddr) {
        self.write(reg, addr as u32);
        if addr >> 32 != 0 {
            self.write(reg + 4, (addr >> 32) as u32);
        }
    }
}

impl Transport for Mmio {
    fn device_type(&self) -> DeviceType {
        self.device_type
    }

    fn read_device_features(&mut self) -> u64 {
        // Selector 0 on a new device; a legacy device has no features above bit 31.
        let low = u64::from(self.read(DEVICE_FEATURES));
        if self.legacy {
            return low;
        }
        self.write(DEVICE_FEATURES_SEL, 1);
        low | (u64::from(self.read(DEVICE_FEATURES)) << 32)
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.write(DRIVER_FEATURES, driver_features as u32);
        if !self.legacy {
            self.write(DRIVER_FEATURES_SEL, 1);
            self.write(DRIVER_FEATURES, (driver_features >> 32) as u32);
        }
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        // Legacy virtio-mmio is QEMU's, whose virtio-net queues hold at least 256 entries (its
        // rx/tx_queue_size minimum): no read needed for the 32 the driver asks for.
        if self.legacy {
            return 256;
        }
        self.select(queue);
        self.read(QUEUE_NUM_MAX)
    }

    fn notify(&mut self, queue: u16) {
        self.write(QUEUE_NOTIFY, u32::from(queue));
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_truncate(self.read(STATUS))
    }

    fn set_status(&mut self, status: DeviceStatus) {
        // The reset that starts an initialisation is skipped (the device is new). A legacy device
        // checks no status order (QEMU stores the byte; features and queues are taken in any
        // state): it gets only the final write, which carries every bit.
        if status.is_empty() || (self.legacy && !status.contains(DeviceStatus::DRIVER_OK)) {
            return;
        }
        self.write(STATUS, status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {
        // Not written: QEMU's legacy virtio-mmio resets its page shift to 0, so a queue's PFN
        // register takes the ring's byte address (below 4 GiB here), see `queue_set`.
    }

    fn requires_legacy_layout(&self) -> bool {
        self.legacy
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        self.select(queue);
        self.write(QUEUE_NUM, size);
        if self.legacy {
            // The legacy layout (checked by virtio-drivers) is one block aligned as QEMU aligns
            // a queue it did not get a QueueAlign for (4096, its VIRTIO_PCI_VRING_ALIGN); the
            // "PFN" is the byte address, QEMU's page shift being the 0 of its reset.
            const _: () = assert!(PAGE_SIZE == 4096);
            self.write(LEGACY_QUEUE_PFN, descriptors as u32);
        } else {
            self.write_addr(QUEUE_DESC, descriptors);
            self.write_addr(QUEUE_DRIVER, driver_area);
            self.write_addr(QUEUE_DEVICE, device_area);
            self.write(QUEUE_READY, 1);
        }
    }

    fn queue_unset(&mut self, queue: u16) {
        self.select(queue);
        if self.legacy {
            self.write(LEGACY_QUEUE_PFN, 0);
        } else {
            self.write(QUEUE_READY, 0);
        }
    }

    fn queue_used(&mut self, _queue: u16) -> bool {
        // No queue of a new device is in use.
        false
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        // Acknowledge both causes without reading which one it was (one exit instead of two).
        self.write(INTERRUPT_ACK, 3);
        InterruptStatus::QUEUE_INTERRUPT
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let mut value = T::new_zeroed();
        let bytes = value.as_mut_bytes();
        let end = offset
            .checked_add(bytes.len())
            .ok_or(Error::ConfigSpaceTooSmall)?;
        if end > 0x100 {
            return Err(Error::ConfigSpaceTooSmall);
        }
        let head = match self.head.get() {
            Some(h) => h,
            None => {
                let h = [self.read(CONFIG), self.read(CONFIG + 4)];
                self.head.set(Some(h));
                h
            }
        };
        for (i, byte) in bytes.iter_mut().enumerate() {
            let at = offset + i;
            let word = if at < 8 {
                head[at / 4]
            } else {
                self.read(CONFIG + (at & !3))
            };
            *byte = word.to_le_bytes()[at & 3];
        }
        Ok(value)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
}

/// The virtqueue indices of a virtio-net device.
pub const RX: usize = 0;
/// The transmit queue.
pub const TX: usize = 1;

/// What the driver needs to ring a queue's doorbell itself and to steer the device's
/// interrupts: the rings' addresses (learnt when virtio-drivers sets the queues up) and the
/// notify register. Shared by the transport and the NIC driver.
#[derive(Debug, Default)]
pub struct Doorbell {
    /// Address of the QueueNotify register; 0 when the transport notifies by itself (PCI).
    notify_reg: AtomicU64,
    event_idx: AtomicBool,
    size: [AtomicU16; 2],
    avail: [AtomicU64; 2],
    used: [AtomicU64; 2],
    /// The avail index at the last doorbell.
    rung: [AtomicU16; 2],
    /// Used entries the driver has taken (virtio-drivers' last_used_idx, as it last wrote it).
    taken: [AtomicU16; 2],
}

/// How far ahead of the device a disarmed used_event points (half the index space: never
/// crossed while the driver keeps moving it).
const DISARMED: u16 = 0x8000;

impl Doorbell {
    fn ring_u16(addr: u64) -> &'static AtomicU16 {
        // SAFETY: `addr` is a 2-byte aligned field (an index, flags or event word) of a virtqueue
        // ring that virtio-drivers allocated for the kernel's lifetime (the NIC is never
        // dropped); the device reads and writes it concurrently, hence the atomic view.
        unsafe { &*(addr as *const AtomicU16) }
    }

    /// Rings queue `q`'s doorbell if buffers were added since the last time and the device asked
    /// to be told (one register write, or none).
    pub fn ring(&self, q: usize) {
        let notify = self.notify_reg.load(Ordering::Relaxed);
        let avail = self.avail[q].load(Ordering::Relaxed);
        if notify == 0 || avail == 0 {
            return;
        }
        let new = Self::ring_u16(avail + 2).load(Ordering::Acquire);
        let old = self.rung[q].load(Ordering::Relaxed);
        if new == old {
            return;
        }
        // The device must see the new avail index before we read what it asked for (as Linux's
        // virtqueue_kick_prepare).
        core::sync::atomic::fence(Ordering::SeqCst);
        let used = self.used[q].load(Ordering::Relaxed);
        let size = u64::from(self.size[q].load(Ordering::Relaxed));
        let needed = if self.event_idx.load(Ordering::Relaxed) {
            let event = Self::ring_u16(used + 4 + 8 * size).load(Ordering::Acquire);
            need_event(event, new, old)
        } else {
            Self::ring_u16(used).load(Ordering::Acquire) & 1 == 0
        };
        self.rung[q].store(new, Ordering::Relaxed);
        if needed {
            write_reg(notify as usize, q as u32);
        }
    }

    /// After the driver took used entries of queue `q`: records how many it has taken (the
    /// used_event virtio-drivers just wrote, its own count) and moves the device's interrupt
    /// threshold out of reach again.
    pub fn took(&self, q: usize) {
        let avail = self.avail[q].load(Ordering::Relaxed);
        if avail == 0 || !self.event_idx.load(Ordering::Relaxed) {
            self.set_interrupts(q, false);
            return;
        }
        let size = u64::from(self.size[q].load(Ordering::Relaxed));
        let written = Self::ring_u16(avail + 4 + 2 * size).load(Ordering::Relaxed);
        self.taken[q].store(written, Ordering::Relaxed);
        self.set_interrupts(q, false);
    }

    /// Arms (the next used entry of queue `q` interrupts) or disarms its interrupts.
    pub fn set_interrupts(&self, q: usize, armed: bool) {
        let avail = self.avail[q].load(Ordering::Relaxed);
        if avail == 0 {
            return;
        }
        if self.event_idx.load(Ordering::Relaxed) {
            let size = u64::from(self.size[q].load(Ordering::Relaxed));
            let taken = self.taken[q].load(Ordering::Relaxed);
            let event = if armed {
                taken
            } else {
                taken.wrapping_add(DISARMED)
            };
            Self::ring_u16(avail + 4 + 2 * size).store(event, Ordering::Release);
        } else {
            Self::ring_u16(avail).store(u16::from(!armed), Ordering::Release);
        }
        // The device must see the threshold before the driver looks at the ring again.
        core::sync::atomic::fence(Ordering::SeqCst);
    }
}

/// virtio's `vring_need_event`: whether moving an index from `old` to `new` crossed `event`.
pub fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// The NIC's transport: lean virtio-mmio or virtio-drivers' PCI transport, behind a
/// [`Doorbell`].
#[derive(Debug)]
pub struct NicTransport {
    inner: Inner,
    bell: Arc<Doorbell>,
}

#[derive(Debug)]
enum Inner {
    Mmio(Mmio),
    Other(SomeTransport<'static>),
}

impl NicTransport {
    /// A virtio-mmio device: notifications go through the doorbell.
    pub fn mmio(mmio: Mmio) -> Self {
        let bell = Doorbell::default();
        bell.notify_reg
            .store((mmio.base + QUEUE_NOTIFY) as u64, Ordering::Relaxed);
        Self {
            inner: Inner::Mmio(mmio),
            bell: Arc::new(bell),
        }
    }

    /// Any other transport: it notifies as virtio-drivers asks.
    pub fn other(transport: SomeTransport<'static>) -> Self {
        Self {
            inner: Inner::Other(transport),
            bell: Arc::new(Doorbell::default()),
        }
    }

    /// The doorbell (shared with the driver).
    pub fn doorbell(&self) -> Arc<Doorbell> {
        Arc::clone(&self.bell)
    }
}

macro_rules! with_inner {
    ($self:ident, $t:ident => $e:expr) => {
        match &mut $self.inner {
            Inner::Mmio($t) => $e,
            Inner::Other($t) => $e,
        }
    };
}

macro_rules! with_ref {
    ($self:ident, $t:ident => $e:expr) => {
        match &$self.inner {
            Inner::Mmio($t) => $e,
            Inner::Other($t) => $e,
        }
    };
}

impl Transport for NicTransport {
    fn device_type(&self) -> DeviceType {
        with_ref!(self, t => t.device_type())
    }

    fn read_device_features(&mut self) -> u64 {
        with_inner!(self, t => t.read_device_features())
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.bell
            .event_idx
            .store(driver_features & RING_EVENT_IDX != 0, Ordering::Relaxed);
        with_inner!(self, t => t.write_driver_features(driver_features))
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        with_inner!(self, t => t.max_queue_size(queue))
    }

    fn notify(&mut self, queue: u16) {
        // MMIO: held back; the driver rings the doorbell once per batch.
        if let Inner::Other(t) = &mut self.inner {
            t.notify(queue);
        }
    }

    fn get_status(&self) -> DeviceStatus {
        with_ref!(self, t => t.get_status())
    }

    fn set_status(&mut self, status: DeviceStatus) {
        with_inner!(self, t => t.set_status(status))
    }

    fn set_guest_page_size(&mut self, guest_page_size: u32) {
        with_inner!(self, t => t.set_guest_page_size(guest_page_size))
    }

    fn requires_legacy_layout(&self) -> bool {
        with_ref!(self, t => t.requires_legacy_layout())
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        if let Some(q) = [RX, TX].into_iter().find(|q| *q == usize::from(queue)) {
            self.bell.size[q].store(size as u16, Ordering::Relaxed);
            self.bell.avail[q].store(driver_area, Ordering::Relaxed);
            self.bell.used[q].store(device_area, Ordering::Relaxed);
        }
        with_inner!(self, t => t.queue_set(queue, size, descriptors, driver_area, device_area))
    }

    fn queue_unset(&mut self, queue: u16) {
        if let Some(q) = [RX, TX].into_iter().find(|q| *q == usize::from(queue)) {
            self.bell.avail[q].store(0, Ordering::Relaxed);
        }
        with_inner!(self, t => t.queue_unset(queue))
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        with_inner!(self, t => t.queue_used(queue))
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        with_inner!(self, t => t.ack_interrupt())
    }

    fn read_config_generation(&self) -> u32 {
        with_ref!(self, t => t.read_config_generation())
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        with_ref!(self, t => t.read_config_space(offset))
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        offset: usize,
        value: T,
    ) -> Result<(), Error> {
        with_inner!(self, t => t.write_config_space(offset, value))
    }
}

#[cfg(test)]
mod tests {
    use super::need_event;

    #[test]
    fn need_event_is_virtio_s_crossing_test() {
        // The device asked to be told when index 5 is made available.
        assert!(need_event(5, 6, 5));
        assert!(need_event(5, 8, 3));
        assert!(!need_event(5, 5, 3));
        assert!(!need_event(5, 9, 6));
        // Across the wrap of the 16-bit index.
        assert!(need_event(65535, 2, 65534));
        assert!(!need_event(65533, 2, 65534));
        // A disarmed threshold half the space ahead is never crossed by a ring's worth.
        assert!(!need_event(10u16.wrapping_add(0x8000), 10 + 32, 10));
    }
}
