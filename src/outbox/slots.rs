//! Slots: how many deliveries are in flight, in all and per receiver; the
//! deliveries claimed and waiting in memory for a slot (the ready lines);
//! and from these and each receiver's circuit, the room to claim more.

use super::*;
use crate::alerts::{Alert, Kind};
use crate::delivery::{Circuit, Transition};

/// What the workers know about one receiver.
#[derive(Debug, Default)]
pub(super) struct ReceiverState {
    pub(super) in_flight: usize,
    /// Claimed deliveries waiting for one of its slots, oldest first.
    pub(super) ready: std::collections::VecDeque<Claimed>,
    /// Places in `ready` promised to deliveries being committed.
    pub(super) reserved: usize,
    /// Its circuit breaker.
    pub(super) circuit: CircuitState,
}

impl ReceiverState {
    /// Deliveries claimed for it and waiting for a slot, places reserved included.
    pub(super) fn held(&self) -> usize {
        self.ready.len() + self.reserved
    }
}

/// Deliveries being sent, in all and per receiver, under one lock.
#[derive(Debug, Default)]
pub(super) struct Slots {
    pub(super) total: usize,
    /// Claimed deliveries waiting in `ready` queues, and places reserved
    /// there, in all.
    pub(super) ready: usize,
    pub(super) receivers: HashMap<String, ReceiverState>,
}

/// A sending slot for one receiver, given back when dropped (with the
/// attempt's result for the breaker, if it got that far), so a task that
/// is cancelled or panics never leaks one.
pub(super) struct Slot {
    pub(super) workers: Arc<Workers>,
    pub(super) receiver: String,
    pub(super) up: Option<bool>,
    /// Why the attempt failed, if it did: what a circuit that opens says.
    pub(super) why: Option<String>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let workers = self.workers.clone();
        workers.release_slot(&self.receiver, self.up, self.why.take());
    }
}

/// A place reserved in a receiver's ready queue for a delivery being
/// committed as claimed; given back when dropped unfilled.
pub(super) struct Hold {
    pub(super) workers: Arc<Workers>,
    pub(super) receiver: String,
    pub(super) filled: bool,
}

impl Hold {
    /// Gives the place to `claimed`, now committed: it goes out as soon as
    /// its receiver has a slot. The place becomes its slot or its entry in
    /// the ready queue under one lock, so no one else sees it free meanwhile.
    pub(super) fn fill(mut self, claimed: Claimed) {
        self.filled = true;
        let receiver = std::mem::take(&mut self.receiver);
        self.workers
            .send_or_hold_with(claimed, |slots| Hold::give_back(slots, &receiver));
    }

    pub(super) fn give_back(slots: &mut Slots, receiver: &str) {
        slots.ready -= 1;
        if let Some(r) = slots.receivers.get_mut(receiver) {
            r.reserved -= 1;
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.filled {
            Hold::give_back(&mut self.workers.slots.lock().unwrap(), &self.receiver);
        }
    }
}

/// How many more deliveries the engine may hold in memory: in flight plus
/// claimed and waiting, at most twice `concurrency`.
fn memory_room(concurrency: usize, slots: &Slots) -> usize {
    (2 * concurrency).saturating_sub(slots.total + slots.ready)
}

/// How many more `r` may have claimed, its circuit being `circuit`: in
/// flight plus held, up to [`READY_FACTOR`] rounds of its `per_receiver`
/// slots; one at a time while half open; none while open.
fn claim_room(r: &ReceiverState, circuit: Circuit, per_receiver: usize) -> usize {
    let held = r.in_flight + r.held();
    match circuit {
        Circuit::Open => 0,
        Circuit::HalfOpen => usize::from(held == 0),
        Circuit::Closed => (READY_FACTOR * per_receiver).saturating_sub(held),
    }
}

/// How many more `r` may send now, its circuit being `circuit`.
fn send_room(r: &ReceiverState, circuit: Circuit, per_receiver: usize) -> usize {
    match circuit {
        Circuit::Open => 0,
        // One probe at a time until one succeeds.
        Circuit::HalfOpen => usize::from(r.in_flight == 0),
        Circuit::Closed => per_receiver.saturating_sub(r.in_flight),
    }
}

impl Workers {
    /// How many more deliveries each receiver may take now, and which are paused.
    pub(super) fn room(&self) -> Room {
        let now = now_ms();
        let mut slots = self.slots.lock().unwrap();
        slots
            .receivers
            .retain(|_, r| r.in_flight > 0 || r.circuit.failures() > 0 || r.held() > 0);
        let mut room = Room {
            default: READY_FACTOR * self.per_receiver(),
            ..Room::default()
        };
        for (name, r) in &slots.receivers {
            room.per_receiver
                .insert(name.clone(), self.claimable(r, now));
            if let Some(until) = r.circuit.open_until(now) {
                room.paused.insert(name.clone(), until);
            }
        }
        room
    }

    /// How many more deliveries the engine may hold in memory: in flight
    /// plus claimed and waiting, at most twice `concurrency`.
    pub(super) fn memory_room(&self, slots: &Slots) -> usize {
        memory_room(self.sender.config().concurrency.max(1), slots)
    }

    pub(super) fn per_receiver(&self) -> usize {
        self.sender.config().per_receiver_concurrency.max(1)
    }

    /// How many more `r` may have claimed: in flight plus held, up to
    /// [`READY_FACTOR`] times its slots; one at a time while half open.
    pub(super) fn claimable(&self, r: &ReceiverState, now: u64) -> usize {
        claim_room(
            r,
            r.circuit.circuit(&self.breaker, now),
            self.per_receiver(),
        )
    }

    /// How many more `r` may send now.
    pub(super) fn room_of(&self, r: &ReceiverState, now: u64) -> usize {
        send_room(
            r,
            r.circuit.circuit(&self.breaker, now),
            self.per_receiver(),
        )
    }

    /// Takes a sending slot for `receiver` if it and the engine have room.
    pub(super) fn try_slot(self: &Arc<Self>, receiver: String) -> Option<Slot> {
        let mut slots = self.slots.lock().unwrap();
        if slots.total >= self.sender.config().concurrency.max(1) {
            return None;
        }
        let r = slots.receivers.entry(receiver.clone()).or_default();
        if self.room_of(r, now_ms()) == 0 {
            return None;
        }
        r.in_flight += 1;
        slots.total += 1;
        drop(slots);
        Some(self.guard(receiver))
    }

    /// Reserves a place in `receiver`'s ready queue for a delivery about to
    /// be committed as claimed, so that it skips a trip through the queue's
    /// claim, if the receiver is up and has less than two rounds of its
    /// slots in flight or waiting (the third is left for the pump, so
    /// deliveries already waiting in the queue keep going out), and the
    /// engine holds less than twice `concurrency`. Only on a queue whose
    /// claims last until finished: on NATS, a delivery queued as claimed
    /// has a lease that is not renewed, so only one sent at once is.
    pub(super) fn try_hold(self: &Arc<Self>, receiver: String) -> Option<Hold> {
        if !self.queue.claims_last() {
            return None;
        }
        let mut slots = self.slots.lock().unwrap();
        if self.memory_room(&slots) == 0 {
            return None;
        }
        let r = slots.receivers.entry(receiver.clone()).or_default();
        // More than a round of claim room left (none while open or half open).
        if self.claimable(r, now_ms()) <= self.per_receiver() {
            return None;
        }
        r.reserved += 1;
        slots.ready += 1;
        Some(Hold {
            workers: self.clone(),
            receiver,
            filled: false,
        })
    }

    pub(super) fn guard(self: &Arc<Self>, receiver: String) -> Slot {
        Slot {
            workers: self.clone(),
            receiver,
            up: None,
            why: None,
        }
    }

    /// Gives a slot back (with `up`, updating the receiver's breaker too)
    /// and hands it to the receiver's next held delivery, if it may send.
    pub(super) fn release_slot(
        self: &Arc<Self>,
        receiver: &str,
        up: Option<bool>,
        why: Option<String>,
    ) {
        let (next, refill, changed) = {
            let mut slots = self.slots.lock().unwrap();
            let slots = &mut *slots;
            slots.total -= 1;
            let r = slots.receivers.entry(receiver.to_owned()).or_default();
            r.in_flight -= 1;
            let changed = up.and_then(|up| r.circuit.record(&self.breaker, receiver, up));
            // Once stopping, held deliveries stay claimed for the next run.
            let next = if self.room_of(r, now_ms()) > 0 && !self.stop.is_cancelled() {
                r.ready.pop_front()
            } else {
                None
            };
            if next.is_some() {
                r.in_flight += 1;
                slots.total += 1;
                slots.ready -= 1;
            }
            // Claim more once it holds less than a round of its slots (so a
            // claim serves many deliveries), or if this slot went unused.
            (next, r.ready.len() < self.per_receiver(), changed)
        };
        if let Some(changed) = changed {
            self.alerts.raise(match changed {
                Transition::Opened {
                    failures,
                    cooldown_ms,
                } => Alert::new(Kind::CircuitOpened, receiver)
                    .with("failures", failures)
                    .with("paused_ms", cooldown_ms)
                    .with("error", why),
                Transition::Closed => Alert::new(Kind::CircuitClosed, receiver),
            });
        }
        if let Some(claimed) = next {
            let slot = self.guard(receiver.to_owned());
            self.launch(claimed, slot);
        }
        if refill {
            self.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(in_flight: usize, ready: usize, reserved: usize) -> ReceiverState {
        let mut r = ReceiverState {
            in_flight,
            reserved,
            ..ReceiverState::default()
        };
        for i in 0..ready {
            r.ready.push_back(Claimed {
                delivery: crate::delivery::Delivery::new(
                    format!("d{i}"),
                    "hook".into(),
                    "http://r.test/",
                    Vec::new(),
                    Vec::new(),
                    Default::default(),
                )
                .unwrap(),
                attempts: 0,
            });
        }
        r
    }

    #[test]
    fn a_closed_receiver_claims_up_to_three_rounds_of_its_slots_held_or_in_flight() {
        let per = 8;
        assert_eq!(claim_room(&receiver(0, 0, 0), Circuit::Closed, per), 24);
        // In flight, waiting and reserved places all count.
        assert_eq!(claim_room(&receiver(8, 6, 2), Circuit::Closed, per), 8);
        assert_eq!(claim_room(&receiver(8, 16, 4), Circuit::Closed, per), 0);
        // It sends up to its slots, whatever it holds.
        assert_eq!(send_room(&receiver(5, 16, 0), Circuit::Closed, per), 3);
        assert_eq!(send_room(&receiver(9, 0, 0), Circuit::Closed, per), 0);
    }

    #[test]
    fn an_open_receiver_gets_nothing_and_a_half_open_one_a_single_probe() {
        let per = 8;
        for r in [receiver(0, 0, 0), receiver(2, 1, 0)] {
            assert_eq!(claim_room(&r, Circuit::Open, per), 0);
            assert_eq!(send_room(&r, Circuit::Open, per), 0);
        }
        assert_eq!(claim_room(&receiver(0, 0, 0), Circuit::HalfOpen, per), 1);
        assert_eq!(claim_room(&receiver(0, 1, 0), Circuit::HalfOpen, per), 0);
        assert_eq!(claim_room(&receiver(0, 0, 1), Circuit::HalfOpen, per), 0);
        assert_eq!(send_room(&receiver(0, 1, 0), Circuit::HalfOpen, per), 1);
        assert_eq!(send_room(&receiver(1, 0, 0), Circuit::HalfOpen, per), 0);
    }

    #[test]
    fn the_engine_holds_at_most_twice_its_concurrency() {
        let slots = |total, ready| Slots {
            total,
            ready,
            ..Slots::default()
        };
        assert_eq!(memory_room(64, &slots(0, 0)), 128);
        assert_eq!(memory_room(64, &slots(64, 40)), 24);
        assert_eq!(memory_room(64, &slots(64, 70)), 0);
    }
}
