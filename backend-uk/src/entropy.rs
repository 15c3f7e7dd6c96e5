//! Entropy: a ChaCha20 generator (`rand_chacha`, no_std) seeded from RDRAND when the CPU has it,
//! the host's `janus.seed`, TSC jitter and the wall clock (host-testable core).

#[cfg(not(test))]
use alloc::vec::Vec;

use rand_chacha::ChaCha20Core;
use rand_chacha::rand_core::SeedableRng as _;
use rand_chacha::rand_core::block::BlockRngCore;

/// A ChaCha20 generator (`rand_chacha`'s block core, 256 bytes of keystream per call) with fast
/// key erasure: each fill rekeys it from keystream never handed out, so a later memory
/// disclosure cannot recover what it handed out before. (The core is used without `rand_core`'s
/// `BlockRng` buffer: the buffer would keep handed-out-next bytes in memory, and its code does not
/// fit the hello image's 256 KiB budget.)
#[derive(Debug, Clone)]
pub struct Rng(ChaCha20Core);

/// One call's keystream: 64 words (4 ChaCha20 blocks).
type Keystream = <ChaCha20Core as BlockRngCore>::Results;

/// The last 32 bytes of `ks` as a key.
fn key_of(ks: &Keystream) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (k, w) in key.chunks_exact_mut(4).zip(&ks.as_ref()[56..]) {
        k.copy_from_slice(&w.to_le_bytes());
    }
    key
}

impl Rng {
    /// A generator keyed by mixing `material` (any length) into a 32-byte seed: each 32-byte piece
    /// is XORed into the key, which is then replaced by 32 bytes of its own ChaCha20 keystream.
    pub fn from_seed_material(material: &[u8]) -> Self {
        let mut key = [0u8; 32];
        let mut ks = Keystream::default();
        for chunk in material.chunks(32) {
            for (k, b) in key.iter_mut().zip(chunk) {
                *k ^= b;
            }
            ChaCha20Core::from_seed(key).generate(&mut ks);
            key = key_of(&ks);
        }
        Self(ChaCha20Core::from_seed(key))
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut ks = Keystream::default();
        // 224 bytes a call: the last 32 of each call's keystream are never handed out.
        for chunk in buf.chunks_mut(224) {
            self.0.generate(&mut ks);
            for (out, w) in chunk.chunks_mut(4).zip(ks.as_ref()) {
                out.copy_from_slice(&w.to_le_bytes()[..out.len()]);
            }
        }
        if buf.is_empty() {
            self.0.generate(&mut ks);
        }
        // Fast key erasure: the next key is keystream never handed out.
        self.0 = ChaCha20Core::from_seed(key_of(&ks));
    }
}

/// Gathers seed material on the running machine.
#[cfg(not(test))]
pub fn gather_seed(host_seed: &[u8], wall_ns: u64) -> (Vec<u8>, &'static str) {
    let mut material = Vec::with_capacity(256);
    material.extend_from_slice(host_seed);
    material.extend_from_slice(&wall_ns.to_le_bytes());
    let mut source = "tsc-jitter";
    let mut hw = 0;
    for _ in 0..8 {
        if let Some(v) = crate::arch::cpu::rdrand64() {
            material.extend_from_slice(&v.to_le_bytes());
            hw += 1;
        }
    }
    if hw == 8 {
        source = "rdrand";
    } else if !host_seed.is_empty() {
        source = "host-seed";
    }
    // TSC jitter across port I/O exits (each exit costs tens of microseconds on nested KVM: a
    // third of a millisecond of boot for four rounds), only when the CPU gave no hardware
    // randomness; with RDRAND the TSC itself is mixed in.
    let rounds = if hw == 8 { 0 } else { 64 };
    material.extend_from_slice(&crate::arch::cpu::rdtsc().to_le_bytes());
    for _ in 0..rounds {
        let t = crate::arch::cpu::rdtsc();
        crate::drivers::pit::latch_read();
        material
            .extend_from_slice(&(crate::arch::cpu::rdtsc().wrapping_sub(t) as u16).to_le_bytes());
    }
    (material, source)
}

static RNG: spinning_top::Spinlock<Option<Rng>> = spinning_top::Spinlock::new(None);

/// Installs the kernel generator.
pub fn init(material: &[u8]) {
    *RNG.lock() = Some(Rng::from_seed_material(material));
}

/// Fills `buf` from the kernel generator (seeded with the TSC if [`init`] was not called).
pub fn fill(buf: &mut [u8]) {
    let mut rng = RNG.lock();
    let rng = rng
        .get_or_insert_with(|| Rng::from_seed_material(&crate::arch::cpu::rdtsc().to_le_bytes()));
    rng.fill(buf);
}

/// A random u64.
pub fn u64() -> u64 {
    let mut b = [0u8; 8];
    fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::RngCore as _;

    #[test]
    fn rfc8439_block_vector() {
        // RFC 8439 2.3.2: key 00..1f, block counter 1, nonce 000000090000004a00000000. In
        // rand_chacha's layout state words 12-13 are a 64-bit block counter and 14-15 the stream:
        // counter 1 | 0x0900_0000 << 32, stream 0x4a00_0000.
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        let mut rng = rand_chacha::ChaCha20Rng::from_seed(key);
        rng.set_stream(0x4a00_0000);
        rng.set_word_pos((1u128 | (0x0900_0000u128 << 32)) * 16);
        let mut out = [0u8; 64];
        rng.fill_bytes(&mut out);
        assert_eq!(&out[..8], &[0x10, 0xf1, 0xe7, 0xe4, 0xd1, 0x3b, 0x59, 0x15]);
        assert_eq!(
            &out[56..],
            &[0xcb, 0xd0, 0x83, 0xe8, 0xa2, 0x50, 0x3c, 0x4e]
        );
    }

    #[test]
    fn rng_depends_on_seed_and_never_repeats() {
        let mut a = Rng::from_seed_material(b"seed one");
        let mut b = Rng::from_seed_material(b"seed two");
        let (mut x, mut y, mut z) = ([0u8; 100], [0u8; 100], [0u8; 100]);
        a.fill(&mut x);
        b.fill(&mut y);
        a.fill(&mut z);
        assert_ne!(x, y);
        assert_ne!(x, z);
        let mut again = Rng::from_seed_material(b"seed one");
        let mut x2 = [0u8; 100];
        again.fill(&mut x2);
        assert_eq!(x, x2);
    }
}
