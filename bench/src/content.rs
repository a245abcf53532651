//! Deterministic blob content generated on the fly: piece `i` (1 MiB) comes
//! from a fast PRNG seeded with `(seed, i)`, so any byte range can be produced
//! again without keeping it, and a 256 MiB blob never sits in memory.

use bytes::Bytes;
use futures::Stream;
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use sha2::{Digest, Sha256};

const PIECE: u64 = 1 << 20;

/// A generated blob of `size` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Content {
    pub seed: u64,
    pub size: u64,
}

impl Content {
    pub fn new(seed: u64, size: u64) -> Self {
        Self { seed, size }
    }

    fn piece(&self, index: u64) -> Vec<u8> {
        let len = PIECE.min(self.size - index * PIECE) as usize;
        let mut buf = vec![0u8; len];
        let key = self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index;
        SmallRng::seed_from_u64(key).fill_bytes(&mut buf);
        buf
    }

    /// Bytes `start..end` as a sequence of at most 1 MiB buffers, generated lazily.
    fn range(self, start: u64, end: u64) -> impl Iterator<Item = Bytes> {
        let first = start / PIECE;
        let last = end.div_ceil(PIECE);
        (first..last).map(move |i| {
            let piece = Bytes::from(self.piece(i));
            let base = i * PIECE;
            let from = (start.max(base) - base) as usize;
            let to = (end.min(base + piece.len() as u64) - base) as usize;
            piece.slice(from..to)
        })
    }

    /// Bytes `start..end` as a request body stream.
    pub fn stream(
        self,
        start: u64,
        end: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures::stream::iter(self.range(start, end).map(Ok))
    }

    /// `sha256:<hex>` of the whole blob, computed over the same generated stream.
    pub fn digest(self) -> String {
        let mut h = Sha256::new();
        for b in self.range(0, self.size) {
            h.update(&b);
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

impl Content {
    /// XXH3-64 of the whole blob: a checksum a client can keep up with at
    /// many GB/s, to verify every byte received without the client's CPU
    /// bounding the transfer.
    pub fn xxh3(self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for b in self.range(0, self.size) {
            h.update(&b);
        }
        h.digest()
    }
}

/// `sha256:<hex>` of a byte slice.
pub fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_concatenate_to_the_whole() {
        let c = Content::new(7, 3 * PIECE + 123);
        let whole: Vec<u8> = c.range(0, c.size).flat_map(|b| b.to_vec()).collect();
        assert_eq!(whole.len() as u64, c.size);
        let mut parts = Vec::new();
        for (s, e) in [
            (0, 1000),
            (1000, PIECE + 5),
            (PIECE + 5, 2 * PIECE),
            (2 * PIECE, c.size),
        ] {
            parts.extend(c.range(s, e).flat_map(|b| b.to_vec()));
        }
        assert_eq!(parts, whole);
        assert_eq!(c.digest(), digest_of(&whole));
        assert_ne!(Content::new(8, c.size).digest(), c.digest());
    }
}
