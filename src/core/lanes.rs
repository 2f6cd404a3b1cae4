//! The queued items, in lanes: one for the items without a key, one per key with work, taken
//! in turn, and the weight rule that decides whether the item at a lane's head fits.
//!
//! - **Turns.** Lanes with an item that may start wait in a ring; each pop takes the head of the
//!   first lane that fits and puts that lane at the back. A key with one item so starts it
//!   within one round of the lanes with work, however long the other lanes are. Within a lane
//!   the limiter's queue order holds.
//! - **Per-key limits.** A key whose running weight leaves no room for its head item leaves the
//!   ring until one of its items ends (or its limit grows): its head waits, and so does the rest
//!   of its lane, in order.
//! - **Weights.** An item counts its weight toward the global limit and its key's. One heavier
//!   than a limit fits when nothing else of that limit runs.
//! - **No starvation by weight.** A head item that does not fit the global limit is set aside
//!   (one at a time) and holds its weight against its key; lighter items may start before it
//!   only `limit` times, after which nothing starts until it fits. It therefore starts within
//!   `2 × limit` completions (those running when it was set aside, and those let past it).
//! - **Memory.** A key's lane is freed when nothing of it is queued or running.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

use super::cell::Job;
use super::queue::{Queue, QueueOrder};
use crate::key::Key;
use crate::metrics::KeyMetrics;

/// The weight rule: an item of weight `weight` fits under `limit` when `used` leaves room for
/// it, or when nothing runs (an item heavier than the limit runs alone rather than never).
fn fits(weight: u32, used: usize, limit: usize) -> bool {
    used == 0 || used.saturating_add(weight as usize) <= limit
}

/// The queue of a lane: the unkeyed one, or a key's.
fn lane_queue<'a>(unkeyed: &'a mut Queue, lane: &'a mut Option<&mut KeyLane>) -> &'a mut Queue {
    match lane {
        None => unkeyed,
        Some(lane) => &mut lane.queue,
    }
}

/// One key's queued items and running weight.
struct KeyLane {
    queue: Queue,
    /// The key's limit in force.
    limit: usize,
    running: usize,
    /// The weight of the key's running items, plus that of its item set aside, if any.
    weight: usize,
    /// Where the lane is: in the ring, waiting for its own limit, or idle (nothing queued).
    place: Place,
    /// Items of the key started and ended since the lane was made (`KeyMetrics`).
    started: u64,
    ended: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Idle,
    Ring,
    /// Its head does not fit the key's limit: back in the ring when one of its items ends or
    /// its limit changes.
    WaitsForKey,
}

/// The head item that did not fit the global limit, set aside until it does.
struct SetAside {
    job: Job,
    key: Option<Key>,
    weight: u32,
    /// How many more items may start before it.
    passes_left: usize,
}

pub(crate) struct Lanes {
    order: QueueOrder,
    unkeyed: Queue,
    unkeyed_in_ring: bool,
    /// Hashed with foldhash, seeded per process: a key is hashed on every push, pop and end,
    /// and SipHash was a fifth of a keyed item's instructions.
    keys: HashMap<Key, KeyLane, RandomState>,
    /// Lanes whose head may start, in turn order; `None` is the lane of items without a key.
    ring: VecDeque<Option<Key>>,
    aside: Option<SetAside>,
    /// The limit of a key with none of its own (`usize::MAX`: none).
    per_key_limit: usize,
    /// Limits set for single keys, kept while no item of the key is around.
    key_limits: HashMap<Key, usize, RandomState>,
    /// A keyed item was ever queued: the manager then moves every submission into the lanes at
    /// once (a key's one item must be seen to get its turn), rather than a FIFO window.
    keyed: bool,
}

/// Queue entries passed because their items left the queue without starting: cancelled
/// (aborted, a token) or timed out (a queue deadline), counted apart.
#[derive(Default)]
pub(crate) struct Skipped {
    pub(crate) cancelled: u64,
    pub(crate) timed_out: u64,
}

impl Skipped {
    fn count(&mut self, job: &Job) {
        match job.timed_out() {
            true => self.timed_out += 1,
            false => self.cancelled += 1,
        }
    }
}

/// A popped item and its weight.
pub(crate) type Popped = (Job, u32);

impl Lanes {
    pub(crate) fn new(order: QueueOrder, per_key_limit: usize) -> Lanes {
        Lanes {
            order,
            unkeyed: Queue::new(order),
            unkeyed_in_ring: false,
            keys: HashMap::default(),
            ring: VecDeque::new(),
            aside: None,
            per_key_limit,
            key_limits: HashMap::default(),
            keyed: false,
        }
    }

    pub(crate) fn push(&mut self, job: Job) {
        let Some(key) = job.key() else {
            self.unkeyed.push(job);
            // Without keys the unkeyed lane is the only one and takes no turns (the fast path of
            // `pop`); it joins the ring once a key has a lane.
            if !self.keys.is_empty() && !self.unkeyed_in_ring {
                self.unkeyed_in_ring = true;
                self.ring.push_back(None);
            }
            return;
        };
        self.keyed = true;
        if self.keys.is_empty() && !self.unkeyed_in_ring && !self.unkeyed.is_empty() {
            self.unkeyed_in_ring = true;
            self.ring.push_back(None);
        }
        // One lookup when the lane exists (the common case), a second to make it.
        let lane = match self.keys.get_mut(key) {
            Some(lane) => lane,
            None => {
                let lane = self.new_lane(key);
                self.keys.entry(key.clone()).or_insert(lane)
            }
        };
        let joins_ring = (lane.place == Place::Idle).then(|| key.clone());
        if joins_ring.is_some() {
            lane.place = Place::Ring;
        }
        lane.queue.push(job);
        if let Some(key) = joins_ring {
            self.ring.push_back(Some(key));
        }
    }

    /// A new lane for `key`: idle, empty, under the key's limit.
    fn new_lane(&self, key: &Key) -> KeyLane {
        KeyLane {
            queue: Queue::new(self.order),
            limit: self.key_limit(key),
            running: 0,
            weight: 0,
            place: Place::Idle,
            started: 0,
            ended: 0,
        }
    }

    /// Takes the next item that fits, given the global `limit` and the weight `used` of the
    /// running items; counts in `skipped` the entries of items cancelled while queued that it
    /// passed.
    pub(crate) fn pop(
        &mut self,
        limit: usize,
        used: usize,
        skipped: &mut Skipped,
    ) -> Option<Popped> {
        if let Some(aside) = &mut self.aside {
            if !aside.job.is_queued() {
                skipped.count(&aside.job);
                self.drop_aside();
            } else if fits(aside.weight, used, limit) {
                let aside = self.aside.take().expect("checked above");
                if let Some(key) = &aside.key {
                    let lane = self
                        .keys
                        .get_mut(key)
                        .expect("a set-aside item keeps its lane");
                    lane.running += 1;
                    lane.started += 1;
                }
                return Some((aside.job, aside.weight));
            } else if aside.passes_left == 0 {
                return None;
            }
        }
        let popped = if self.keys.is_empty() {
            self.pop_unkeyed(limit, used, skipped)
        } else {
            self.pop_ring(limit, used, skipped)
        };
        if let (Some(_), Some(aside)) = (&popped, &mut self.aside) {
            aside.passes_left = aside.passes_left.saturating_sub(1);
        }
        popped
    }

    /// `pop` over the lanes in turn: the first whose head fits goes to the ring's back.
    fn pop_ring(&mut self, limit: usize, used: usize, skipped: &mut Skipped) -> Option<Popped> {
        for _ in 0..self.ring.len() {
            let lane = self.ring.pop_front()?;
            if let Some(popped) = self.pop_lane(lane, limit, used, skipped) {
                return Some(popped);
            }
        }
        None
    }

    /// `pop` while no key has a lane: the unkeyed lane alone, without turns. A head item too
    /// heavy for the room is set aside, and the next may pass it.
    fn pop_unkeyed(&mut self, limit: usize, used: usize, skipped: &mut Skipped) -> Option<Popped> {
        loop {
            let weight = self.unkeyed.peek()?.queued_weight();
            let Some(weight) = weight else {
                let job = self.unkeyed.pop().expect("peeked");
                skipped.count(&job);
                continue;
            };
            if fits(weight, used, limit) {
                return Some((self.unkeyed.pop().expect("peeked"), weight));
            }
            if self.aside.is_some() {
                return None;
            }
            let job = self.unkeyed.pop().expect("peeked");
            self.aside = Some(SetAside {
                job,
                key: None,
                weight,
                passes_left: limit,
            });
        }
    }

    /// Tries the head of one lane just taken off the ring's front; puts the lane back at the
    /// ring's back while it has items that may start. One lookup of the key's lane.
    fn pop_lane(
        &mut self,
        key: Option<Key>,
        limit: usize,
        used: usize,
        skipped: &mut Skipped,
    ) -> Option<Popped> {
        let Lanes {
            unkeyed,
            unkeyed_in_ring,
            keys,
            ring,
            aside,
            ..
        } = self;
        let mut lane = key
            .as_ref()
            .map(|key| keys.get_mut(key).expect("a lane in the ring"));
        let queue = lane_queue(unkeyed, &mut lane);
        // Entries of items cancelled while queued: their work is gone; drop the pointers.
        let weight = loop {
            match queue.peek().map(Job::queued_weight) {
                None => break None,
                Some(Some(weight)) => break Some(weight),
                Some(None) => {
                    let job = queue.pop().expect("peeked");
                    skipped.count(&job);
                }
            }
        };
        let Some(weight) = weight else {
            match lane {
                None => *unkeyed_in_ring = false,
                Some(lane) => {
                    lane.place = Place::Idle;
                    let unused = lane.weight == 0;
                    if unused {
                        self.free(key.as_ref().expect("a keyed lane"));
                    }
                }
            }
            return None;
        };
        if let Some(lane) = &mut lane {
            if !fits(weight, lane.weight, lane.limit) {
                lane.place = Place::WaitsForKey;
                return None;
            }
        }
        if !fits(weight, used, limit) {
            if aside.is_some() {
                ring.push_back(key);
                return None;
            }
            let queue = lane_queue(unkeyed, &mut lane);
            let job = queue.pop().expect("peeked");
            let more = !queue.is_empty();
            if let Some(lane) = &mut lane {
                // Held against the key while set aside: the key's later items cannot take
                // the room it needs.
                lane.weight += weight as usize;
            }
            *aside = Some(SetAside {
                job,
                key: key.clone(),
                weight,
                passes_left: limit,
            });
            self.requeue(key, more);
            return None;
        }
        let queue = lane_queue(unkeyed, &mut lane);
        let job = queue.pop().expect("peeked");
        let more = !queue.is_empty();
        if let Some(lane) = &mut lane {
            lane.running += 1;
            lane.started += 1;
            lane.weight += weight as usize;
        }
        self.requeue(key, more);
        Some((job, weight))
    }

    /// A lane just popped from: back in the ring if it has `more`, else out of it (a key's
    /// lane then has a running item, so it stays).
    fn requeue(&mut self, key: Option<Key>, more: bool) {
        if more {
            self.ring.push_back(key);
            return;
        }
        match key {
            None => self.unkeyed_in_ring = false,
            Some(key) => {
                if let Some(lane) = self.keys.get_mut(&key) {
                    lane.place = Place::Idle;
                }
            }
        }
    }

    fn free_if_unused(&mut self, key: &Key) {
        let Some(lane) = self.keys.get(key) else {
            return;
        };
        if lane.weight == 0 && lane.queue.is_empty() {
            self.free(key);
        }
    }

    /// Frees a key's lane, and the tables' room once most of it is unused.
    fn free(&mut self, key: &Key) {
        self.keys.remove(key);
        // A burst of many keys leaves no table behind.
        if self.keys.capacity() > 64 && self.keys.len() * 4 < self.keys.capacity() {
            self.keys.shrink_to(self.keys.len() * 2);
        }
        if self.ring.capacity() > 64 && self.ring.len() * 4 < self.ring.capacity() {
            self.ring.shrink_to(self.ring.len() * 2);
        }
    }

    fn drop_aside(&mut self) {
        let Some(aside) = self.aside.take() else {
            return;
        };
        if let Some(key) = &aside.key {
            if let Some(lane) = self.keys.get_mut(key) {
                lane.weight -= aside.weight as usize;
                if lane.place == Place::WaitsForKey {
                    lane.place = Place::Ring;
                    self.ring.push_back(Some(key.clone()));
                }
            }
            self.free_if_unused(key);
        }
        drop(aside.job);
    }

    /// Whether a queued item would start before a new item of `key` (or without one): an item
    /// set aside, a lane in turn, queued unkeyed items, or the key's own queued items.
    pub(crate) fn ahead_of(&self, key: Option<&Key>) -> bool {
        self.aside.is_some()
            || !self.ring.is_empty()
            || !self.unkeyed.is_empty()
            || key.is_some_and(|key| self.keys.get(key).is_some_and(|l| !l.queue.is_empty()))
    }

    /// Whether an item of `weight` (and `key`) fits now, beside `used` of the global `limit`
    /// and its key's running weight: the rule `pop` applies.
    pub(crate) fn fits(&self, weight: u32, used: usize, limit: usize, key: Option<&Key>) -> bool {
        fits(weight, used, limit)
            && key.is_none_or(|key| match self.keys.get(key) {
                Some(lane) => fits(weight, lane.weight, lane.limit),
                None => fits(weight, 0, self.key_limit(key)),
            })
    }

    /// Counts an item of `key` that starts without passing through its lane's queue (a lease
    /// granted at once): as `pop` counts the items it takes.
    pub(crate) fn charge(&mut self, key: &Key, weight: u32) {
        if !self.keys.contains_key(key) {
            let lane = self.new_lane(key);
            self.keys.insert(key.clone(), lane);
        }
        let lane = self.keys.get_mut(key).expect("made above");
        lane.running += 1;
        lane.started += 1;
        lane.weight += weight as usize;
    }

    /// An item of `key` with `weight` ended. Returns true if its lane may start items again.
    pub(crate) fn finish(&mut self, key: &Key, weight: u32) -> bool {
        let Some(lane) = self.keys.get_mut(key) else {
            debug_assert!(false, "a running item's key has a lane");
            return false;
        };
        lane.running -= 1;
        lane.ended += 1;
        lane.weight -= weight as usize;
        let woke = lane.place == Place::WaitsForKey;
        if woke {
            lane.place = Place::Ring;
            self.ring.push_back(Some(key.clone()));
        } else if lane.weight == 0 && lane.queue.is_empty() {
            self.free(key);
        }
        woke
    }

    /// Whether some lane may have an item to start.
    pub(crate) fn has_ready(&self) -> bool {
        !self.ring.is_empty() || self.aside.is_some()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.aside.is_none()
            && self.unkeyed.is_empty()
            && self.keys.values().all(|lane| lane.queue.is_empty())
    }

    /// The lane of items without a key, for the FIFO window of the manager's refill.
    pub(crate) fn unkeyed(&self) -> &Queue {
        &self.unkeyed
    }

    pub(crate) fn keyed(&self) -> bool {
        self.keyed
    }

    /// Removes every queued item (shutdown), leaving the running keys' lanes.
    pub(crate) fn take_all(&mut self) -> Vec<Job> {
        let mut jobs = self.unkeyed.take_all();
        self.unkeyed_in_ring = false;
        if let Some(aside) = self.aside.take() {
            if let Some(key) = &aside.key {
                if let Some(lane) = self.keys.get_mut(key) {
                    lane.weight -= aside.weight as usize;
                }
            }
            jobs.push(aside.job);
        }
        for lane in self.keys.values_mut() {
            jobs.extend(lane.queue.take_all());
            lane.place = Place::Idle;
        }
        self.keys
            .retain(|_, lane| lane.weight != 0 || !lane.queue.is_empty());
        self.ring = VecDeque::new();
        jobs
    }

    pub(crate) fn key_limit(&self, key: &Key) -> usize {
        self.key_limits
            .get(key)
            .copied()
            .unwrap_or(self.per_key_limit)
    }

    /// Sets one key's limit; returns true if its lane may start items now.
    pub(crate) fn set_key_limit(&mut self, key: Key, limit: usize) -> bool {
        let mut ready = false;
        if let Some(lane) = self.keys.get_mut(&key) {
            lane.limit = limit;
            if lane.place == Place::WaitsForKey {
                lane.place = Place::Ring;
                self.ring.push_back(Some(key.clone()));
                ready = true;
            }
        }
        self.key_limits.insert(key, limit);
        ready
    }

    /// Up to `n` keys with the most entries queued, most first, and their metrics. One pass
    /// over the keys' lanes (not their entries) ranks them by queue entries, which include
    /// entries of items cancelled while queued that the queue has not yet passed; the metrics
    /// returned count only the items still waiting.
    pub(crate) fn most_queued(&self, n: usize) -> Vec<(Key, KeyMetrics)> {
        let mut ranked: Vec<(usize, &Key)> = self
            .keys
            .iter()
            .map(|(key, lane)| (lane.queue.entries(), key))
            .filter(|&(entries, _)| entries > 0)
            .collect();
        if ranked.len() > n {
            ranked.select_nth_unstable_by(n, |a, b| b.0.cmp(&a.0));
            ranked.truncate(n);
        }
        ranked.sort_unstable_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        ranked
            .into_iter()
            .filter_map(|(_, key)| Some((key.clone(), self.key_metrics(key)?)))
            .collect()
    }

    pub(crate) fn key_metrics(&self, key: &Key) -> Option<KeyMetrics> {
        let lane = self.keys.get(key)?;
        let aside = self
            .aside
            .as_ref()
            .filter(|aside| aside.key.as_ref() == Some(key) && aside.job.is_queued());
        let aside_weight = self
            .aside
            .as_ref()
            .filter(|aside| aside.key.as_ref() == Some(key))
            .map_or(0, |aside| aside.weight as usize);
        let queued = lane.queue.count_queued() + usize::from(aside.is_some());
        let weight_running = lane.weight - aside_weight;
        if queued == 0 && lane.running == 0 {
            return None;
        }
        Some(KeyMetrics {
            limit: lane.limit,
            queued,
            running: lane.running,
            weight_running,
            started: lane.started,
            ended: lane.ended,
        })
    }
}
