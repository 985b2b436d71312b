//! Values: slices of one pre-generated buffer, random bytes or JSON-like text, so that making a value costs
//! nothing per call.

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// One buffer that every value is a zero-copy slice of.
#[derive(Debug, Clone)]
pub(crate) struct ValuePool {
    buffer: Bytes,
}

impl ValuePool {
    pub(crate) fn new(max_value: u64, compressible: bool, seed: u64) -> Self {
        // Slack beyond the largest value so that equal-sized values still differ (random offsets).
        let len = max_value as usize + 64 * 1024;
        let buffer = if compressible {
            json_like(len, seed)
        } else {
            let mut rng = SmallRng::seed_from_u64(seed ^ 0xA5A5);
            let mut buf = vec![0u8; len];
            rng.fill(&mut buf[..]);
            buf
        };
        Self {
            buffer: Bytes::from(buffer),
        }
    }

    pub(crate) fn value(&self, size: u64, rng: &mut SmallRng) -> Bytes {
        let size = size as usize;
        let offset = rng.random_range(0..=self.buffer.len() - size);
        self.buffer.slice(offset..offset + size)
    }
}

/// JSON-like records (repeated field names, varying values): zstd-3 compresses them about 5–6×, like real
/// JSON exports (docs/benchmarks.md, "The load generator").
fn json_like(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len + 256);
    out.push(b'[');
    let mut record = 0u64;
    while out.len() < len {
        let r: u64 = rng.random();
        let line = format!(
            r#"{{"id":{record},"guid":"{:016x}","name":"element-{}","type":"{}","level":{},"area":{}.{:02},"tags":["{}","{}"],"visible":{}}},"#,
            r,
            r % 10_000,
            ["IfcWall", "IfcSlab", "IfcDoor", "IfcWindow", "IfcBeam"][(r >> 8) as usize % 5],
            (r >> 16) % 40,
            (r >> 24) % 1000,
            (r >> 32) % 100,
            ["structural", "interior", "exterior", "load-bearing"][(r >> 40) as usize % 4],
            ["phase-1", "phase-2", "demolished"][(r >> 48) as usize % 3],
            r & 1 == 0,
        );
        out.extend_from_slice(line.as_bytes());
        record += 1;
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_asked_size_and_come_from_the_buffer() {
        let pool = ValuePool::new(4096, false, 1);
        let mut rng = SmallRng::seed_from_u64(2);
        for size in [0, 1, 100, 4096] {
            let v = pool.value(size, &mut rng);
            assert_eq!(v.len() as u64, size);
        }
    }

    #[test]
    fn json_like_is_deterministic_text_of_the_asked_length() {
        let a = json_like(10_000, 4);
        assert_eq!(a.len(), 10_000);
        assert_eq!(a, json_like(10_000, 4));
        assert!(a.starts_with(b"[{\"id\":0,"));
        assert!(a.iter().all(u8::is_ascii));
    }
}
