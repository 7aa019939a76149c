//! A timing wheel over slab indices (intrusive doubly linked lists), 1 ms resolution.
//!
//! Level 0 is a *circular* array of 65,536 one-millisecond slots: any deadline less than
//! 65.5 s ahead goes straight into the slot `when mod 65536`, wherever the block boundaries
//! fall, and is never moved again. That matters: in a classic aligned hierarchical wheel
//! (tokio's), a 5 s interval crosses a level-0 block boundary every time the block ends, and the
//! next block's entries are cascaded down in one batch when it starts. With a million devices
//! that batch is tens of thousands of cold cache lines, a multi-millisecond stall of the shard
//! every few hundred milliseconds (measured: tick lateness p99 2.9 ms, max 81 ms with 256-slot
//! aligned levels). With the circular level 0, intervals up to 65 s never cascade at all.
//!
//! Deadlines further out sit in three aligned upper levels of 256 slots (bits 16-23, 24-31,
//! 32-39 of the deadline, ~34 years in all) and are cascaded into level 0 when their slot
//! starts; beyond that they wait in a side list. Insert and remove are O(1); the next
//! non-empty slot is found through occupancy bitmaps (with a summary bitmap for level 0).
//!
//! Entries are keyed by `u32` (the shard's device slab index). Each key costs 16 bytes:
//! deadline (46 bits) + slot tag (18 bits), next, prev (the links serve the upper levels and
//! side lists; level-0 slots hold their keys in arrays, +4 bytes per armed key).

use super::time::SimMs;

const L0_BITS: u32 = 16;
const L0_SLOTS: usize = 1 << L0_BITS;
const L0_MASK: u64 = L0_SLOTS as u64 - 1;
const UPPER_LEVELS: usize = 3;
const UPPER_BITS: u32 = 8;
const UPPER_SLOTS: usize = 1 << UPPER_BITS;
const UPPER_MASK: u64 = UPPER_SLOTS as u64 - 1;
/// Reach of the levels: 2^40 ms.
const MAX_SPAN: u64 = 1 << (L0_BITS + UPPER_BITS * UPPER_LEVELS as u32);
/// Span of one top-level slot.
const TOP_SLOT_SPAN: u64 = MAX_SPAN >> UPPER_BITS;
const NONE: u32 = u32::MAX;
const WHEN_BITS: u32 = 46;
const WHEN_MASK: u64 = (1 << WHEN_BITS) - 1;
/// The latest deadline the wheel can hold; later ones are clamped to it (see
/// [`super::time::LAST_SIM_MS`], which keeps runs well below it).
pub const MAX_DEADLINE_MS: SimMs = WHEN_MASK;
const TAG_BITS: u32 = 64 - WHEN_BITS;
/// Slot tag of a key that is not armed.
const TAG_IDLE: u32 = (1 << TAG_BITS) - 1;
/// Slot tag of a key whose deadline had already passed when it was armed.
const TAG_OVERDUE: u32 = TAG_IDLE - 1;
/// Slot tag of a key due further out than the levels reach; moved into the wheel later.
const TAG_FAR: u32 = TAG_IDLE - 2;
/// Number of slot heads: level 0, then the upper levels.
const HEADS: usize = L0_SLOTS + UPPER_LEVELS * UPPER_SLOTS;
/// How far ahead a bucket drain prefetches nodes.
const BUCKET_PREFETCH: usize = 8;
/// Emptied bucket allocations kept for reuse, and the largest kept.
const MAX_SPARE_BUCKETS: usize = 8192;
const MAX_SPARE_CAPACITY: usize = 4096;

#[derive(Clone, Copy)]
struct Node {
    /// Low 46 bits: deadline in ms; high 18 bits: slot tag.
    when_tag: u64,
    next: u32,
    prev: u32,
}

impl Node {
    const IDLE: Node = Node { when_tag: (TAG_IDLE as u64) << WHEN_BITS, next: NONE, prev: NONE };
    fn when(&self) -> u64 {
        self.when_tag & WHEN_MASK
    }
    fn tag(&self) -> u32 {
        (self.when_tag >> WHEN_BITS) as u32
    }
}

/// Where the next piece of work is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    Far,
    Upper { level: usize, slot: usize },
    Level0 { slot: usize },
}

/// The timing wheel of one shard.
pub struct Wheel {
    nodes: Vec<Node>,
    heads: Vec<u32>,
    /// Level 0: the keys of each one-millisecond slot, in arrays rather than linked lists, so
    /// that draining a slot reads keys sequentially and can prefetch their nodes. Removal is
    /// lazy: a removed or moved key stays in its old bucket and is skipped when the bucket is
    /// drained (its node no longer names this slot).
    buckets: Vec<Vec<u32>>,
    /// Emptied bucket allocations, reused by the next slots that fill.
    spare: Vec<Vec<u32>>,
    l0_bits: Box<[u64; L0_SLOTS / 64]>,
    l0_summary: [u64; L0_SLOTS / 64 / 64],
    upper_bits: [[u64; UPPER_SLOTS / 64]; UPPER_LEVELS],
    overdue_head: u32,
    far_head: u32,
    /// Earliest deadline in the far list (a lower bound while it is not empty).
    far_min: u64,
    elapsed: SimMs,
    len: usize,
}

impl Wheel {
    /// An empty wheel whose time starts at `now`.
    pub fn new(now: SimMs) -> Wheel {
        Wheel {
            nodes: Vec::new(),
            heads: vec![NONE; HEADS],
            buckets: (0..L0_SLOTS).map(|_| Vec::new()).collect(),
            spare: Vec::new(),
            l0_bits: Box::new([0; L0_SLOTS / 64]),
            l0_summary: [0; L0_SLOTS / 64 / 64],
            upper_bits: [[0; UPPER_SLOTS / 64]; UPPER_LEVELS],
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
            if self.nodes.capacity() < n {
                self.nodes.reserve(n - self.nodes.len());
                super::mem::advise_huge_pages(&self.nodes);
            }
            self.nodes.resize(n, Node::IDLE);
        }
    }

    /// Drops the nodes of keys from `n` on (their devices were stopped and the table gave
    /// their keys back, `DeviceTable::trim_tail`), keeping any that is still armed, and gives
    /// the memory back. Level-0 buckets may still name a dropped key (removal is lazy): a
    /// drain skips it.
    pub fn truncate_keys(&mut self, n: usize) {
        let keep = self.nodes[n.min(self.nodes.len())..]
            .iter()
            .rposition(|node| node.tag() != TAG_IDLE)
            .map_or(n, |i| n + i + 1);
        if keep < self.nodes.len() {
            self.nodes.truncate(keep);
            super::mem::shrink(&mut self.nodes);
        }
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
        } else if when - self.elapsed <= L0_MASK {
            let slot = (when & L0_MASK) as usize;
            self.l0_set(slot);
            let bucket = &mut self.buckets[slot];
            if bucket.capacity() == 0
                && let Some(spare) = self.spare.pop()
            {
                *bucket = spare;
            }
            bucket.push(key);
            self.nodes[key as usize] =
                Node { when_tag: when | (slot as u64) << WHEN_BITS, next: NONE, prev: NONE };
            self.len += 1;
            return;
        } else if when >= (self.elapsed & !(TOP_SLOT_SPAN - 1)) + MAX_SPAN {
            // Beyond the top level's current rotation: its slot would be ambiguous.
            self.far_min = self.far_min.min(when);
            TAG_FAR
        } else {
            let level = upper_level_for(self.elapsed, when);
            let slot = ((when >> upper_shift(level)) & UPPER_MASK) as usize;
            self.upper_bits[level][slot / 64] |= 1 << (slot % 64);
            (L0_SLOTS + level * UPPER_SLOTS + slot) as u32
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
        if (tag as usize) < L0_SLOTS {
            // Lazy: the key stays in its bucket and is skipped when the bucket is drained.
            self.nodes[key as usize] = Node::IDLE;
            self.len -= 1;
            return Some(node.when());
        }
        if node.prev != NONE {
            self.nodes[node.prev as usize].next = node.next;
        } else {
            *self.head_mut(tag) = node.next;
            if node.next == NONE {
                self.clear_bit(tag);
            }
        }
        if node.next != NONE {
            self.nodes[node.next as usize].prev = node.prev;
        }
        self.nodes[key as usize] = Node::IDLE;
        self.len -= 1;
        Some(node.when())
    }

    fn head_mut(&mut self, tag: u32) -> &mut u32 {
        match tag {
            TAG_OVERDUE => &mut self.overdue_head,
            TAG_FAR => &mut self.far_head,
            _ => &mut self.heads[tag as usize],
        }
    }

    fn l0_set(&mut self, slot: usize) {
        self.l0_bits[slot / 64] |= 1 << (slot % 64);
        self.l0_summary[slot / 4096] |= 1 << ((slot / 64) % 64);
    }

    fn clear_bit(&mut self, tag: u32) {
        let tag = tag as usize;
        if tag < L0_SLOTS {
            self.l0_bits[tag / 64] &= !(1 << (tag % 64));
            if self.l0_bits[tag / 64] == 0 {
                self.l0_summary[tag / 4096] &= !(1 << ((tag / 64) % 64));
            }
        } else if tag < HEADS {
            let (level, slot) = ((tag - L0_SLOTS) / UPPER_SLOTS, (tag - L0_SLOTS) % UPPER_SLOTS);
            self.upper_bits[level][slot / 64] &= !(1 << (slot % 64));
        }
    }

    /// When the earliest far entry comes within reach: the first top-slot boundary from which
    /// it is no longer ambiguous.
    fn far_due(&self) -> Option<SimMs> {
        (self.far_head != NONE).then(|| {
            let reach = (self.far_min.saturating_sub(MAX_SPAN) / TOP_SLOT_SPAN + 1) * TOP_SLOT_SPAN;
            reach.max(self.elapsed)
        })
    }

    fn next_l0(&self) -> Option<(usize, SimMs)> {
        let now_slot = (self.elapsed & L0_MASK) as usize;
        let (w, b) = (now_slot / 64, now_slot % 64);
        let here = self.l0_bits[w] & (u64::MAX << b);
        let slot = if here != 0 {
            w * 64 + here.trailing_zeros() as usize
        } else {
            let word = next_set_circular(&self.l0_summary, (w + 1) % (L0_SLOTS / 64))?;
            word * 64 + self.l0_bits[word].trailing_zeros() as usize
        };
        let dist = (slot as u64).wrapping_sub(now_slot as u64) & L0_MASK;
        Some((slot, self.elapsed + dist))
    }

    fn next_upper(&self, level: usize) -> Option<(usize, SimMs)> {
        let shift = upper_shift(level);
        let now_slot = ((self.elapsed >> shift) & UPPER_MASK) as usize;
        let slot = next_set_circular(&self.upper_bits[level], now_slot)?;
        let level_span = 1u64 << (shift + UPPER_BITS);
        let level_start = self.elapsed & !(level_span - 1);
        let mut deadline = level_start + ((slot as u64) << shift);
        if deadline < self.elapsed {
            deadline += level_span;
        }
        Some((slot, deadline.max(self.elapsed)))
    }

    /// The earliest piece of work and its time. Cascades and far moves win ties, so that every
    /// entry due at that millisecond is handed out together.
    fn next_work(&self) -> Option<(Next, SimMs)> {
        let mut best: Option<(Next, SimMs)> = self.far_due().map(|d| (Next::Far, d));
        for level in 0..UPPER_LEVELS {
            if let Some((slot, d)) = self.next_upper(level)
                && best.is_none_or(|(_, b)| d < b)
            {
                best = Some((Next::Upper { level, slot }, d));
            }
        }
        if let Some((slot, d)) = self.next_l0()
            && best.is_none_or(|(_, b)| d < b)
        {
            best = Some((Next::Level0 { slot }, d));
        }
        best
    }

    /// The time at which the wheel next has work: an entry's deadline, or an upper slot that
    /// must be cascaded. `None` when empty. Never earlier than `elapsed`.
    pub fn next_expiration(&self) -> Option<SimMs> {
        if self.len == 0 {
            // Only stale bucket entries (if any) are left.
            return None;
        }
        if self.overdue_head != NONE {
            return Some(self.elapsed);
        }
        self.next_work().map(|(_, d)| d)
    }

    /// Advances the wheel to `now` and appends every key due at or before `now` to `out`, with
    /// its deadline: first keys that were armed already overdue, then the rest in deadline
    /// order (keys due at the same millisecond in a fixed but unspecified order). Fired keys
    /// are disarmed.
    pub fn poll(&mut self, now: SimMs, out: &mut Vec<(u32, SimMs)>) {
        self.take_overdue(out);
        while let Some((next, deadline)) = self.next_work() {
            if deadline > now {
                break;
            }
            self.elapsed = self.elapsed.max(deadline);
            match next {
                Next::Far => {
                    let list = std::mem::replace(&mut self.far_head, NONE);
                    self.far_min = u64::MAX;
                    self.reinsert(list, now, out);
                }
                Next::Upper { level, slot } => {
                    let tag = L0_SLOTS + level * UPPER_SLOTS + slot;
                    let list = std::mem::replace(&mut self.heads[tag], NONE);
                    self.upper_bits[level][slot / 64] &= !(1 << (slot % 64));
                    self.reinsert(list, now, out);
                }
                Next::Level0 { slot } => {
                    let mut bucket = std::mem::take(&mut self.buckets[slot]);
                    self.clear_bit(slot as u32);
                    for (i, &key) in bucket.iter().enumerate() {
                        if let Some(&ahead) = bucket.get(i + BUCKET_PREFETCH) {
                            self.prefetch(ahead);
                        }
                        // A key past the nodes was dropped by `truncate_keys` after it was
                        // removed here.
                        let Some(&node) = self.nodes.get(key as usize) else { continue };
                        // Skip keys removed or moved since they were put here.
                        if node.tag() == slot as u32 && node.when() == deadline {
                            self.nodes[key as usize] = Node::IDLE;
                            self.len -= 1;
                            out.push((key, deadline));
                        }
                    }
                    bucket.clear();
                    if self.spare.len() < MAX_SPARE_BUCKETS
                        && bucket.capacity() <= MAX_SPARE_CAPACITY
                    {
                        self.spare.push(bucket);
                    }
                }
            }
            self.take_overdue(out);
        }
        self.elapsed = self.elapsed.max(now);
    }

    /// Moves a detached list back into the wheel relative to the new `elapsed`; entries that are
    /// due by then fire.
    fn reinsert(&mut self, mut key: u32, now: SimMs, out: &mut Vec<(u32, SimMs)>) {
        while key != NONE {
            let node = self.nodes[key as usize];
            self.nodes[key as usize] = Node::IDLE;
            self.len -= 1;
            if node.when() <= self.elapsed && node.when() <= now {
                out.push((key, node.when()));
            } else {
                self.insert(key, node.when());
            }
            key = node.next;
        }
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

const fn upper_shift(level: usize) -> u32 {
    L0_BITS + UPPER_BITS * level as u32
}

/// The upper level (0-based) of a deadline at least 65,536 ms ahead: the highest 8-bit group
/// above bit 16 in which it differs from `elapsed`, clamped to the top level.
fn upper_level_for(elapsed: u64, when: u64) -> usize {
    let diff = ((elapsed ^ when) >> L0_BITS) | 1;
    ((63 - diff.leading_zeros()) / UPPER_BITS).min(UPPER_LEVELS as u32 - 1) as usize
}

/// The first set bit at or after `from`, wrapping round; `None` if no bit is set.
fn next_set_circular(bits: &[u64], from: usize) -> Option<usize> {
    let n = bits.len();
    let (word, bit) = (from / 64 % n, from % 64);
    let first = bits[word] & (u64::MAX << bit);
    if first != 0 {
        return Some(word * 64 + first.trailing_zeros() as usize);
    }
    for i in 1..=n {
        let w = (word + i) % n;
        let b = if i == n { bits[w] & !(u64::MAX << bit) } else { bits[w] };
        if b != 0 {
            return Some(w * 64 + b.trailing_zeros() as usize);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    #[test]
    fn dropped_keys_left_in_a_bucket_are_skipped() {
        let mut w = Wheel::new(0);
        for k in 0..100u32 {
            w.insert(k, 50 + (k as u64 % 3));
        }
        // Keys 60.. removed (lazily: still in their buckets), then dropped.
        for k in 60..100 {
            w.remove(k);
        }
        w.insert(200, 10);
        w.remove(200);
        w.truncate_keys(60);
        assert_eq!(w.nodes.len(), 60);
        // An armed key past the cut keeps its node.
        w.insert(80, 70);
        w.truncate_keys(60);
        assert_eq!(w.nodes.len(), 81);
        let mut out = vec![];
        w.poll(100, &mut out);
        let mut keys: Vec<u32> = out.iter().map(|e| e.0).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..60).chain([80]).collect::<Vec<_>>());
        assert!(w.is_empty());
    }
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
        assert!(steps <= UPPER_LEVELS + 2, "took {steps} steps");
    }

    #[test]
    fn next_set_bit_wraps_round_the_bitmap() {
        let mut bits = [0u64; 4];
        assert_eq!(next_set_circular(&bits, 17), None);
        bits[0] |= 1 << 3;
        assert_eq!(next_set_circular(&bits, 17), Some(3));
        assert_eq!(next_set_circular(&bits, 3), Some(3));
        bits[2] |= 1 << 5;
        assert_eq!(next_set_circular(&bits, 17), Some(133));
        assert_eq!(next_set_circular(&bits, 134), Some(3));
        bits[3] |= 1 << 63;
        assert_eq!(next_set_circular(&bits, 134), Some(255));
    }

    #[test]
    fn short_deadlines_never_cascade_across_block_boundaries() {
        // A device every 5 s, crossing many 65,536 ms boundaries: it always sits in level 0.
        let mut w = Wheel::new(60_000);
        w.insert(0, 65_000);
        let mut out = vec![];
        for _ in 0..100 {
            let t = w.next_expiration().unwrap();
            w.poll(t, &mut out);
            let (k, at) = out.pop().unwrap();
            assert!(out.is_empty());
            assert_eq!(at, t, "every wake-up is a firing, never a cascade");
            w.insert(k, at + 5_000);
            let tag = w.nodes[0].tag() as usize;
            assert!(tag < L0_SLOTS, "5 s ahead lives in level 0");
        }
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
            4 => (0u32..64, prop_oneof![8 => 0u64..200, 8 => 0u64..10_000, 8 => 60_000u64..140_000, 8 => 0u64..5_000_000, 1 => 0u64..3_000_000_000_000]).prop_map(|(k, d)| Op::Insert(k, d)),
            1 => (0u32..64).prop_map(Op::Remove),
            2 => prop_oneof![0u64..100, 0u64..50_000, 60_000u64..70_000, 0u64..1_200_000_000_000].prop_map(Op::Poll),
            2 => Just(Op::PollNext),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(600))]
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
