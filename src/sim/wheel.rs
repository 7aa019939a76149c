//! A hierarchical timing wheel over slab indices (intrusive doubly linked lists).
//!
//! Five levels of 256 slots at 1 ms resolution cover 2^40 ms (~34 years); an entry further out
//! waits in a side list until it comes within reach. 256 slots per level (rather than tokio's
//! 64) means a 5 s interval sits in level 1 and is cascaded once, not three times: with a
//! million devices each cascade is a cache miss, so this is worth a 32-byte bitmap per level. Insert, remove and
//! advancing by one slot are O(1); finding the next non-empty slot is a bitmap scan per level.
//! The layout follows tokio's timer wheel: an entry lives in the level given by the highest
//! 8-bit group in which its deadline differs from `elapsed`, so lower levels always hold sooner
//! entries, and `elapsed` only moves forward.
//!
//! Entries are keyed by `u32` (the shard's device slab index). Each key costs 16 bytes:
//! deadline (48 bits) + slot tag (16 bits), next, prev.

use super::time::SimMs;

const LEVELS: usize = 5;
const SLOT_BITS: u32 = 8;
const SLOTS: usize = 1 << SLOT_BITS;
const SLOT_MASK: u64 = SLOTS as u64 - 1;
const MAX_SPAN: u64 = 1 << (SLOT_BITS as usize * LEVELS);
/// Span of one top-level slot.
const TOP_SLOT_SPAN: u64 = MAX_SPAN / SLOTS as u64;
const NONE: u32 = u32::MAX;
const WHEN_BITS: u32 = 48;
const WHEN_MASK: u64 = (1 << WHEN_BITS) - 1;
/// Slot tag of a key that is not armed.
const TAG_IDLE: u16 = u16::MAX;
/// Slot tag of a key whose deadline had already passed when it was armed.
const TAG_OVERDUE: u16 = u16::MAX - 1;
/// Slot tag of a key due further out than the wheel spans; moved into the wheel later.
const TAG_FAR: u16 = u16::MAX - 2;

#[derive(Clone, Copy)]
struct Node {
    /// Low 48 bits: deadline in ms; high 16 bits: slot tag.
    when_tag: u64,
    next: u32,
    prev: u32,
}

impl Node {
    const IDLE: Node = Node { when_tag: (TAG_IDLE as u64) << WHEN_BITS, next: NONE, prev: NONE };
    fn when(&self) -> u64 {
        self.when_tag & WHEN_MASK
    }
    fn tag(&self) -> u16 {
        (self.when_tag >> WHEN_BITS) as u16
    }
}

/// The timing wheel of one shard.
pub struct Wheel {
    nodes: Vec<Node>,
    heads: Vec<u32>,
    /// One 256-bit occupancy bitmap per level.
    occupied: [[u64; 4]; LEVELS],
    overdue_head: u32,
    far_head: u32,
    /// Earliest deadline in the far list (valid while it is not empty).
    far_min: u64,
    elapsed: SimMs,
    len: usize,
}

impl Wheel {
    /// An empty wheel whose time starts at `now`.
    pub fn new(now: SimMs) -> Wheel {
        Wheel {
            nodes: Vec::new(),
            heads: vec![NONE; LEVELS * SLOTS + 1],
            occupied: [[0; 4]; LEVELS],
            overdue_head: NONE,
            far_head: NONE,
            far_min: u64::MAX,
            elapsed: now,
            len: 0,
        }
    }

    /// The wheel's current time: every entry due at or before it has been handed out.
    pub fn elapsed(&self) -> SimMs {
        self.elapsed
    }

    /// Number of armed entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Makes room for keys below `n`.
    pub fn reserve_keys(&mut self, n: usize) {
        if self.nodes.len() < n {
            self.nodes.resize(n, Node::IDLE);
        }
    }

    /// Bytes used per key (for memory accounting).
    pub const fn bytes_per_key() -> usize {
        std::mem::size_of::<Node>()
    }

    /// Hints the CPU to load a key's node, which will be needed soon.
    #[inline]
    pub fn prefetch(&self, key: u32) {
        #[cfg(target_arch = "x86_64")]
        if let Some(n) = self.nodes.get(key as usize) {
            // SAFETY: prefetching is a hint; nothing is dereferenced.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (n as *const Node).cast(),
                )
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// The deadline of an armed key.
    pub fn deadline(&self, key: u32) -> Option<SimMs> {
        let n = self.nodes.get(key as usize)?;
        (n.tag() != TAG_IDLE).then(|| n.when())
    }

    /// Arms `key` for `when`. A key already armed is moved.
    pub fn insert(&mut self, key: u32, when: SimMs) {
        self.reserve_keys(key as usize + 1);
        if self.nodes[key as usize].tag() != TAG_IDLE {
            self.remove(key);
        }
        let when = when.min(WHEN_MASK);
        let tag = if when <= self.elapsed {
            TAG_OVERDUE
        } else if when >= (self.elapsed & !(TOP_SLOT_SPAN - 1)) + MAX_SPAN {
            // Beyond the current top-level rotation's reach: its slot would be ambiguous.
            self.far_min = self.far_min.min(when);
            TAG_FAR
        } else {
            let level = level_for(self.elapsed, when);
            let slot = ((when >> (level as u32 * SLOT_BITS)) & SLOT_MASK) as usize;
            self.occupied[level][slot / 64] |= 1 << (slot % 64);
            (level * SLOTS + slot) as u16
        };
        let head = self.head_mut(tag);
        let old = *head;
        *head = key;
        self.nodes[key as usize] =
            Node { when_tag: when | (tag as u64) << WHEN_BITS, next: old, prev: NONE };
        if old != NONE {
            self.nodes[old as usize].prev = key;
        }
        self.len += 1;
    }

    /// Disarms `key`; returns its deadline if it was armed.
    pub fn remove(&mut self, key: u32) -> Option<SimMs> {
        let node = *self.nodes.get(key as usize)?;
        let tag = node.tag();
        if tag == TAG_IDLE {
            return None;
        }
        if node.prev != NONE {
            self.nodes[node.prev as usize].next = node.next;
        } else {
            *self.head_mut(tag) = node.next;
            if node.next == NONE && tag < TAG_FAR {
                let (level, slot) = (tag as usize / SLOTS, tag as usize % SLOTS);
                self.occupied[level][slot / 64] &= !(1 << (slot % 64));
            }
        }
        if node.next != NONE {
            self.nodes[node.next as usize].prev = node.prev;
        }
        self.nodes[key as usize] = Node::IDLE;
        self.len -= 1;
        Some(node.when())
    }

    fn head_mut(&mut self, tag: u16) -> &mut u32 {
        match tag {
            TAG_OVERDUE => &mut self.overdue_head,
            TAG_FAR => &mut self.far_head,
            _ => &mut self.heads[tag as usize],
        }
    }

    /// When the earliest far entry comes within the wheel's span.
    fn far_due(&self) -> Option<SimMs> {
        // The first top-slot boundary from which the earliest far entry is in reach.
        (self.far_head != NONE).then(|| {
            let reach = (self.far_min.saturating_sub(MAX_SPAN) / TOP_SLOT_SPAN + 1) * TOP_SLOT_SPAN;
            reach.max(self.elapsed)
        })
    }

    fn migrate_far(&mut self) {
        let mut key = std::mem::replace(&mut self.far_head, NONE);
        self.far_min = u64::MAX;
        while key != NONE {
            let node = self.nodes[key as usize];
            self.nodes[key as usize] = Node::IDLE;
            self.len -= 1;
            self.insert(key, node.when());
            key = node.next;
        }
    }

    /// The time at which the wheel next has work: an entry's deadline, or a higher-level slot
    /// that must be cascaded. `None` when empty. Never earlier than `elapsed`.
    pub fn next_expiration(&self) -> Option<SimMs> {
        if self.overdue_head != NONE {
            return Some(self.elapsed);
        }
        let wheel = (0..LEVELS).find_map(|level| self.next_in_level(level).map(|(_, d)| d));
        match (wheel, self.far_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn next_in_level(&self, level: usize) -> Option<(usize, SimMs)> {
        let occupied = &self.occupied[level];
        let shift = level as u32 * SLOT_BITS;
        let now_slot = ((self.elapsed >> shift) & SLOT_MASK) as u32;
        let slot = next_set_bit(occupied, now_slot)?;
        let level_span = 1u64 << (shift + SLOT_BITS);
        let level_start = self.elapsed & !(level_span - 1);
        let mut deadline = level_start + ((slot as u64) << shift);
        if deadline < self.elapsed {
            // Only the top level can wrap: its slot belongs to the next rotation.
            deadline += level_span;
        }
        Some((slot as usize, deadline.max(self.elapsed)))
    }

    /// Advances the wheel to `now` and appends every key due at or before `now` to `out`, with
    /// its deadline, in
    /// deadline order (keys due at the same millisecond in a fixed but unspecified order).
    /// Fired keys are disarmed.
    pub fn poll(&mut self, now: SimMs, out: &mut Vec<(u32, SimMs)>) {
        self.take_overdue(out);
        loop {
            let next =
                (0..LEVELS).find_map(|l| self.next_in_level(l).map(|(slot, d)| (l, slot, d)));
            if let Some(far) = self.far_due()
                && far <= now
                && next.is_none_or(|(_, _, d)| far <= d)
            {
                self.elapsed = far;
                self.migrate_far();
                continue;
            }
            let Some((level, slot, deadline)) = next else {
                break;
            };
            if deadline > now {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            let tag = level * SLOTS + slot;
            let mut key = std::mem::replace(&mut self.heads[tag], NONE);
            self.occupied[level][slot / 64] &= !(1 << (slot % 64));
            while key != NONE {
                let node = self.nodes[key as usize];
                self.nodes[key as usize] = Node::IDLE;
                self.len -= 1;
                if node.when() <= now && node.when() <= self.elapsed {
                    out.push((key, node.when()));
                } else {
                    self.insert(key, node.when());
                }
                key = node.next;
            }
            self.take_overdue(out);
        }
        self.elapsed = self.elapsed.max(now);
    }

    fn take_overdue(&mut self, out: &mut Vec<(u32, SimMs)>) {
        let mut key = std::mem::replace(&mut self.overdue_head, NONE);
        while key != NONE {
            let node = self.nodes[key as usize];
            self.nodes[key as usize] = Node::IDLE;
            self.len -= 1;
            out.push((key, node.when()));
            key = node.next;
        }
    }
}

/// The first set bit at or after `from`, wrapping round; `None` if no bit is set.
fn next_set_bit(bits: &[u64; 4], from: u32) -> Option<u32> {
    let (word, bit) = ((from / 64) as usize, from % 64);
    let first = bits[word] & (u64::MAX << bit);
    if first != 0 {
        return Some(word as u32 * 64 + first.trailing_zeros());
    }
    for i in 1..=4 {
        let w = (word + i) % 4;
        let b = if i == 4 { bits[w] & !(u64::MAX << bit) } else { bits[w] };
        if b != 0 {
            return Some(w as u32 * 64 + b.trailing_zeros());
        }
    }
    None
}

fn level_for(elapsed: u64, when: u64) -> usize {
    let significant = ((elapsed ^ when) | SLOT_MASK).min(MAX_SPAN - 1);
    (63 - significant.leading_zeros() as usize) / SLOT_BITS as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn an_entry_fires_once_at_its_deadline() {
        let mut w = Wheel::new(1000);
        w.insert(3, 1005);
        let mut out = vec![];
        w.poll(1004, &mut out);
        assert!(out.is_empty());
        w.poll(1005, &mut out);
        assert_eq!(out, vec![(3, 1005)]);
        w.poll(100_000, &mut out);
        assert_eq!(out, vec![(3, 1005)]);
        assert!(w.is_empty());
    }

    #[test]
    fn next_expiration_jumps_over_empty_time() {
        let mut w = Wheel::new(0);
        w.insert(1, 5_000_000);
        let mut out = vec![];
        let mut steps = 0;
        while out.is_empty() {
            let t = w.next_expiration().unwrap();
            w.poll(t, &mut out);
            steps += 1;
        }
        assert_eq!(out, vec![(1, 5_000_000)]);
        assert_eq!(w.elapsed(), 5_000_000);
        assert!(steps <= LEVELS + 1, "took {steps} steps");
    }

    #[test]
    fn next_set_bit_wraps_round_the_bitmap() {
        let mut bits = [0u64; 4];
        assert_eq!(next_set_bit(&bits, 17), None);
        bits[0] |= 1 << 3;
        assert_eq!(next_set_bit(&bits, 17), Some(3));
        assert_eq!(next_set_bit(&bits, 3), Some(3));
        bits[2] |= 1 << 5;
        assert_eq!(next_set_bit(&bits, 17), Some(133));
        assert_eq!(next_set_bit(&bits, 134), Some(3));
        bits[3] |= 1 << 63;
        assert_eq!(next_set_bit(&bits, 134), Some(255));
    }

    #[test]
    fn removed_entries_never_fire() {
        let mut w = Wheel::new(0);
        for k in 0..100 {
            w.insert(k, 10 + k as u64 * 100);
        }
        for k in (0..100).step_by(2) {
            assert!(w.remove(k).is_some());
        }
        let mut out = vec![];
        w.poll(1_000_000, &mut out);
        assert_eq!(out, (1..100).step_by(2).map(|k| (k, 10 + k as u64 * 100)).collect::<Vec<_>>());
    }

    #[test]
    fn a_deadline_in_the_past_fires_on_the_next_poll() {
        let mut w = Wheel::new(10_000);
        w.insert(7, 50);
        assert_eq!(w.next_expiration(), Some(10_000));
        let mut out = vec![];
        w.poll(10_000, &mut out);
        assert_eq!(out, vec![(7, 50)]);
    }

    #[test]
    fn entries_beyond_the_top_level_still_fire() {
        let mut w = Wheel::new(0);
        w.insert(1, MAX_SPAN * 3 + 17);
        let mut out = vec![];
        while out.is_empty() {
            let t = w.next_expiration().unwrap();
            w.poll(t, &mut out);
        }
        assert_eq!(w.elapsed(), MAX_SPAN * 3 + 17);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u32, u64),
        Remove(u32),
        Poll(u64),
        PollNext,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u32..64, prop_oneof![8 => 0u64..200, 8 => 0u64..10_000, 8 => 0u64..5_000_000, 1 => 0u64..3_000_000_000_000]).prop_map(|(k, d)| Op::Insert(k, d)),
            1 => (0u32..64).prop_map(Op::Remove),
            2 => prop_oneof![0u64..100, 0u64..50_000, 0u64..1_200_000_000_000].prop_map(Op::Poll),
            2 => Just(Op::PollNext),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn wheel_matches_a_binary_heap_model(start in 0u64..1_000_000_000, ops in proptest::collection::vec(op(), 1..300)) {
            let mut wheel = Wheel::new(start);
            // Model: deadline per armed key; a heap of (deadline, key) with lazy deletion.
            let mut armed: Vec<Option<u64>> = vec![None; 64];
            let mut heap = BinaryHeap::new();
            let mut now = start;
            for op in ops {
                match op {
                    Op::Insert(k, d) => {
                        let when = now + d;
                        wheel.insert(k, when);
                        armed[k as usize] = Some(when);
                        heap.push(Reverse((when, k)));
                    }
                    Op::Remove(k) => {
                        prop_assert_eq!(wheel.remove(k), armed[k as usize].take());
                    }
                    Op::Poll(_) | Op::PollNext => {
                        let target = match op {
                            Op::Poll(d) => now + d,
                            _ => wheel.next_expiration().unwrap_or(now),
                        };
                        let mut fired = vec![];
                        wheel.poll(target, &mut fired);
                        let mut expected = vec![];
                        while let Some(Reverse((when, k))) = heap.peek().copied() {
                            if when > target { break; }
                            heap.pop();
                            if armed[k as usize] == Some(when) {
                                armed[k as usize] = None;
                                expected.push((when, k));
                            }
                        }
                        // Deadline order must hold; ties may come in any order.
                        let whens: Vec<u64> = fired.iter().map(|f| f.1).collect();
                        prop_assert!(whens.windows(2).all(|w| w[0] <= w[1]), "out of order: {:?}", whens);
                        for (k, when) in &fired {
                            prop_assert!(expected.contains(&(*when, *k)), "fired {} with deadline {}", k, when);
                        }
                        let mut got: Vec<u32> = fired.iter().map(|f| f.0).collect();
                        got.sort_unstable();
                        let mut want: Vec<u32> = expected.iter().map(|e| e.1).collect();
                        want.sort_unstable();
                        prop_assert_eq!(got, want);
                        now = target.max(now);
                        prop_assert_eq!(wheel.elapsed(), now);
                    }
                }
                prop_assert_eq!(wheel.len(), armed.iter().filter(|a| a.is_some()).count());
                let model_next = armed.iter().flatten().min().copied();
                if let (Some(next), Some(m)) = (wheel.next_expiration(), model_next) {
                    prop_assert!(next <= m.max(now), "wheel next {} after model next {}", next, m);
                } else {
                    prop_assert_eq!(wheel.next_expiration().is_some(), model_next.is_some());
                }
            }
        }
    }
}
