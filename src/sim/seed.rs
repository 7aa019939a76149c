//! The seed chain: master seed -> device seed -> field seed.
//!
//! `device_seed = master XOR fnv1a64(device_id)`, `field_seed = device_seed XOR fnv1a64(field)`,
//! as in the original runtime, but each field then gets its own Xoroshiro128++ stream instead of
//! Go's legacy source. Every random number in the core comes from one of these streams.

/// FNV-1a, 64 bit.
pub const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `base XOR fnv1a64(name)`.
pub fn derive(base: u64, name: &str) -> u64 {
    base ^ fnv1a64(name.as_bytes())
}

/// The seed of one random stream of a field. Part 0 is the field seed itself, so a plain
/// (non-composite) field follows the documented chain exactly; part `i > 0` of a composite field
/// uses `field_seed XOR fnv1a64("#i")`.
pub fn part_seed(field_seed: u64, part: usize) -> u64 {
    if part == 0 {
        field_seed
    } else {
        let mut buf = itoa::Buffer::new();
        let mut name = String::with_capacity(8);
        name.push('#');
        name.push_str(buf.format(part));
        derive(field_seed, &name)
    }
}

/// SplitMix64 finaliser: spreads the bits of a hash so that `% n` is fair.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard that owns a device: a function of its id and the shard count only.
pub fn shard_of(device_id: &str, shards: usize) -> usize {
    (mix64(fnv1a64(device_id.as_bytes()) ^ 0x5348_4152_4400_0000) % shards as u64) as usize
}

/// The offset of a device's first tick inside its interval, so that devices spawned together do
/// not tick in lock-step. Derived from the device seed, so replays keep the phase.
pub fn phase_ms(device_seed: u64, interval_ms: u64) -> u64 {
    if interval_ms == 0 { 0 } else { mix64(device_seed ^ 0x7068_6173_6500_0000) % interval_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn derive_is_xor_of_the_hash() {
        assert_eq!(derive(0, "a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(derive(0xaf63_dc4c_8601_ec8c, "a"), 0);
    }

    #[test]
    fn part_zero_is_the_field_seed_and_parts_differ() {
        assert_eq!(part_seed(42, 0), 42);
        assert_ne!(part_seed(42, 1), part_seed(42, 2));
        assert_ne!(part_seed(42, 1), 42);
    }

    #[test]
    fn shard_of_spreads_ids_over_all_shards() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("sensor-{i:04}"), 4)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn phase_lies_inside_the_interval() {
        for s in 0..1000u64 {
            assert!(phase_ms(mix64(s), 5000) < 5000);
        }
        assert_eq!(phase_ms(7, 0), 0);
    }
}
