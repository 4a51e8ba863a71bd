//! The hash behind every map in this crate: FNV-1a, unseeded.
//!
//! `std`'s default `RandomState` asks the platform for a random seed, which on
//! `wasm32-wasip2` makes the component import `wasi:random/insecure-seed` — a
//! capability it otherwise does not need — and makes iteration order vary between
//! runs. The keys are accounts, paths and usernames from the site's own warehouse,
//! short and not adversarial, which is what FNV is good at.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with the fixed FNV-1a hash.
pub(crate) type FixedMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a as a [`Hasher`].
pub(crate) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(OFFSET)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// FNV-1a of a string's bytes: stable across platforms and releases.
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h = Fnv::default();
    h.write(s.as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fnv1a_values() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn maps_work() {
        let mut m: FixedMap<&str, i32> = FixedMap::default();
        m.insert("x", 1);
        *m.entry("x").or_insert(0) += 1;
        assert_eq!(m.get("x"), Some(&2));
    }
}
