//! Entropy: a ChaCha20 generator seeded from RDSEED/RDRAND when the CPU has them, the host's
//! `janus.seed`, TSC jitter and the wall clock (host-testable core).

#[cfg(not(test))]
use alloc::vec::Vec;

/// The ChaCha20 block function (RFC 8439 section 2.3).
pub fn chacha20_block(key: &[u32; 8], counter: u32, nonce: &[u32; 3]) -> [u8; 64] {
    let mut state = [0u32; 16];
    state[0] = 0x6170_7865;
    state[1] = 0x3320_646e;
    state[2] = 0x7962_2d32;
    state[3] = 0x6b20_6574;
    state[4..12].copy_from_slice(key);
    state[12] = counter;
    state[13..16].copy_from_slice(nonce);
    let mut w = state;
    fn qr(w: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
        w[a] = w[a].wrapping_add(w[b]);
        w[d] = (w[d] ^ w[a]).rotate_left(16);
        w[c] = w[c].wrapping_add(w[d]);
        w[b] = (w[b] ^ w[c]).rotate_left(12);
        w[a] = w[a].wrapping_add(w[b]);
        w[d] = (w[d] ^ w[a]).rotate_left(8);
        w[c] = w[c].wrapping_add(w[d]);
        w[b] = (w[b] ^ w[c]).rotate_left(7);
    }
    for _ in 0..10 {
        qr(&mut w, 0, 4, 8, 12);
        qr(&mut w, 1, 5, 9, 13);
        qr(&mut w, 2, 6, 10, 14);
        qr(&mut w, 3, 7, 11, 15);
        qr(&mut w, 0, 5, 10, 15);
        qr(&mut w, 1, 6, 11, 12);
        qr(&mut w, 2, 7, 8, 13);
        qr(&mut w, 3, 4, 9, 14);
    }
    let mut out = [0u8; 64];
    for i in 0..16 {
        out[i * 4..i * 4 + 4].copy_from_slice(&w[i].wrapping_add(state[i]).to_le_bytes());
    }
    out
}

/// A ChaCha20-based generator with fast key erasure (rekeys itself after every fill).
#[derive(Debug, Clone)]
pub struct Rng {
    key: [u32; 8],
    counter: u32,
}

impl Rng {
    /// A generator keyed by mixing `seed` material (any length) into 32 bytes.
    pub fn from_seed_material(material: &[u8]) -> Self {
        // Absorb the material into a key by chaining ChaCha blocks (a simple sponge-like mixer).
        let mut key = [0u32; 8];
        for chunk in material.chunks(32) {
            let mut block = [0u32; 8];
            for (i, b) in chunk.iter().enumerate() {
                block[i / 4] |= u32::from(*b) << ((i % 4) * 8);
            }
            for i in 0..8 {
                key[i] ^= block[i];
            }
            let out = chacha20_block(&key, chunk.len() as u32, &[0x6a61_6e75, 0x732d_756b, 0]);
            for i in 0..8 {
                key[i] = u32::from_le_bytes([
                    out[i * 4],
                    out[i * 4 + 1],
                    out[i * 4 + 2],
                    out[i * 4 + 3],
                ]);
            }
        }
        Self { key, counter: 0 }
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let nonce = [0, 0, 0];
        for chunk in buf.chunks_mut(64) {
            self.counter = self.counter.wrapping_add(1);
            let block = chacha20_block(&self.key, self.counter, &nonce);
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        // Fast key erasure: the next key comes from a block never handed out.
        self.counter = self.counter.wrapping_add(1);
        let block = chacha20_block(&self.key, self.counter, &[1, 0, 0]);
        for i in 0..8 {
            self.key[i] = u32::from_le_bytes([
                block[i * 4],
                block[i * 4 + 1],
                block[i * 4 + 2],
                block[i * 4 + 3],
            ]);
        }
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

    #[test]
    fn rfc8439_block_vector() {
        // RFC 8439 2.3.2: key 00..1f, counter 1, nonce 000000090000004a00000000
        let mut key = [0u32; 8];
        for (i, k) in key.iter_mut().enumerate() {
            let b = (i * 4) as u8;
            *k = u32::from_le_bytes([b, b + 1, b + 2, b + 3]);
        }
        let out = chacha20_block(&key, 1, &[0x0900_0000, 0x4a00_0000, 0]);
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
