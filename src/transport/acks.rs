//! Which outgoing PUBLISH the broker has acknowledged.
//!
//! rumqttc's `publish` resolves when the request is queued, not when the
//! broker has it. A message we received must not be acknowledged before
//! what it caused (reply, events, commands, dead letter) is safe in the
//! broker, or a crash in between loses it. rumqttc assigns packet ids in
//! its event loop, in the order requests were queued, and reports each as
//! `Outgoing::Publish(pkid)`; so a FIFO of waiters, filled in the order
//! requests are queued (the transport holds a lock across queueing), maps
//! every request to its packet id, and the PUBACK resolves it. A
//! retransmission after a reconnect reports a packet id that is already
//! waiting and takes no new waiter. QoS 0 publishes (packet id 0) resolve
//! when written. No I/O here: the transport feeds it events.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// What the broker said about one publish: `Err` carries the reason of a
/// PUBACK that refused it.
pub(crate) type AckResult = Result<(), String>;

#[derive(Default)]
struct State {
    queued: VecDeque<oneshot::Sender<AckResult>>,
    inflight: HashMap<u16, oneshot::Sender<AckResult>>,
}

/// Waiters for broker acknowledgements of outgoing publishes.
#[derive(Default)]
pub(crate) struct Acks {
    state: Mutex<State>,
}

impl Acks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A waiter for the publish about to be queued. Must be called in the
    /// same order as requests reach the client's queue.
    pub(crate) fn queue(&self) -> oneshot::Receiver<AckResult> {
        let (tx, rx) = oneshot::channel();
        self.state().queued.push_back(tx);
        rx
    }

    /// Takes back the waiter of the last [`Acks::queue`] call after its
    /// request could not be queued.
    pub(crate) fn unqueue_last(&self) {
        self.state().queued.pop_back();
    }

    /// The event loop wrote a PUBLISH with this packet id.
    pub(crate) fn on_outgoing_publish(&self, pkid: u16) {
        let mut s = self.state();
        if pkid != 0 && s.inflight.contains_key(&pkid) {
            return; // a retransmission: its waiter is already in flight
        }
        let Some(tx) = s.queued.pop_front() else {
            return; // a publish not made through the transport
        };
        if pkid == 0 {
            let _ = tx.send(Ok(()));
        } else {
            s.inflight.insert(pkid, tx);
        }
    }

    /// The broker acknowledged packet `pkid`; `refused` is the reason when
    /// the PUBACK's reason code is an error.
    pub(crate) fn on_puback(&self, pkid: u16, refused: Option<String>) {
        if let Some(tx) = self.state().inflight.remove(&pkid) {
            let _ = tx.send(refused.map_or(Ok(()), Err));
        }
    }

    /// Whether nothing waits for the broker.
    pub(crate) fn is_idle(&self) -> bool {
        let s = self.state();
        s.inflight.is_empty() && s.queued.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_resolve_by_packet_id_in_queue_order() {
        let acks = Acks::default();
        let mut a = acks.queue();
        let mut b = acks.queue();
        let mut c = acks.queue();
        acks.on_outgoing_publish(7);
        acks.on_outgoing_publish(0); // QoS 0: written is done
        acks.on_outgoing_publish(8);
        assert_eq!(b.try_recv(), Ok(Ok(())));
        assert!(a.try_recv().is_err());
        // A retransmission after a reconnect takes no waiter.
        acks.on_outgoing_publish(8);
        acks.on_puback(8, Some("quota exceeded".into()));
        acks.on_puback(7, None);
        assert_eq!(a.try_recv(), Ok(Ok(())));
        assert_eq!(c.try_recv(), Ok(Err("quota exceeded".into())));
        assert!(acks.is_idle());
    }

    #[test]
    fn a_request_that_was_not_queued_gives_its_waiter_back() {
        let acks = Acks::default();
        let mut a = acks.queue();
        let _b = acks.queue();
        acks.unqueue_last();
        acks.on_outgoing_publish(1);
        acks.on_puback(1, None);
        assert_eq!(a.try_recv(), Ok(Ok(())));
        assert!(acks.is_idle());
        // Unknown packet ids and publishes made elsewhere change nothing.
        acks.on_puback(99, None);
        acks.on_outgoing_publish(5);
        assert!(acks.is_idle());
    }
}
