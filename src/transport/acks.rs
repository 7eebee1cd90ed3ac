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
//!
//! Each QoS 1 publish also holds a place in the transport's [`Window`]
//! until its PUBACK: rumqttc must never have more publishes waiting for the
//! broker than its own window (the broker's Receive Maximum), see there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// What the broker said about one publish: `Err` carries the reason of a
/// PUBACK that refused it.
pub(crate) type AckResult = Result<(), String>;

/// A waiter and the place in the [`Window`] its publish holds (none for
/// QoS 0), given back when the waiter is resolved or dropped.
type Waiter = (oneshot::Sender<AckResult>, Option<OwnedSemaphorePermit>);

#[derive(Default)]
struct State {
    queued: VecDeque<Waiter>,
    inflight: HashMap<u16, Waiter>,
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

    /// A waiter for the publish about to be queued, holding `place` (in
    /// the [`Window`]) until the broker has it. Must be called in the same
    /// order as requests reach the client's queue.
    pub(crate) fn queue(
        &self,
        place: Option<OwnedSemaphorePermit>,
    ) -> oneshot::Receiver<AckResult> {
        let (tx, rx) = oneshot::channel();
        self.state().queued.push_back((tx, place));
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
        let Some(waiter) = s.queued.pop_front() else {
            return; // a publish not made through the transport
        };
        if pkid == 0 {
            let _ = waiter.0.send(Ok(()));
        } else {
            s.inflight.insert(pkid, waiter);
        }
    }

    /// The broker acknowledged packet `pkid`; `refused` is the reason when
    /// the PUBACK's reason code is an error.
    pub(crate) fn on_puback(&self, pkid: u16, refused: Option<String>) {
        if let Some((tx, _place)) = self.state().inflight.remove(&pkid) {
            let _ = tx.send(refused.map_or(Ok(()), Err));
        }
    }

    /// The broker has no session for us any more (CONNACK without
    /// `session_present`): rumqttc dropped what it was going to send again,
    /// so nothing will acknowledge the publishes it had written. Their
    /// waiters learn that the transport closed (retryable); their places
    /// in the window are free again.
    pub(crate) fn session_lost(&self) {
        self.state().inflight.clear();
    }

    /// Whether nothing waits for the broker.
    pub(crate) fn is_idle(&self) -> bool {
        let s = self.state();
        s.inflight.is_empty() && s.queued.is_empty()
    }
}

/// How many QoS 1 publishes may wait for the broker's PUBACK at once.
///
/// rumqttc numbers publishes cyclically up to its window, the broker's
/// Receive Maximum, and holds back requests while the window is full. When
/// the connection is lost with requests held back, it sends them right
/// after the publishes it sends again on the next connection, without
/// holding them back: their packet ids collide with those publishes, and
/// each collision replaces the one before, which is never sent (rumqttc
/// 0.25), while its PUBACK waiter is matched to a later publish. The
/// transport therefore never lets rumqttc have its window full: a place
/// here is taken before a QoS 1 publish is queued and given back with its
/// PUBACK ([`Acks`]), and the window is a few places smaller than
/// rumqttc's (SUBSCRIBE and UNSUBSCRIBE take packet ids from the same
/// cycle). Resized at every CONNACK, whose Receive Maximum may differ.
pub(crate) struct Window {
    places: Arc<Semaphore>,
    size: Mutex<usize>,
}

impl Window {
    /// A window of `size` places (at least one).
    pub(crate) fn new(size: usize) -> Self {
        let size = size.max(1);
        Window {
            places: Arc::new(Semaphore::new(size)),
            size: Mutex::new(size),
        }
    }

    /// The window for rumqttc's own window `rumqttc` (the smaller of the
    /// broker's Receive Maximum and ours), with room for the packet ids of
    /// `subscriptions` filters' SUBSCRIBE and UNSUBSCRIBE packets.
    pub(crate) fn size_for(rumqttc: u16, subscriptions: usize) -> usize {
        usize::from(rumqttc)
            .saturating_sub(subscriptions + 2)
            .max(1)
    }

    /// Waits for a place; it is given back when the permit is dropped.
    pub(crate) async fn enter(&self) -> OwnedSemaphorePermit {
        self.places
            .clone()
            .acquire_owned()
            .await
            .expect("the window's semaphore is never closed")
    }

    /// Makes the window `size` places (at least one) from now on; places
    /// taken beyond it are given back before new ones are handed out.
    pub(crate) fn resize(&self, size: usize) {
        let size = size.max(1);
        let mut current = self.size.lock().unwrap_or_else(|p| p.into_inner());
        if size > *current {
            self.places.add_permits(size - *current);
        } else if size < *current {
            let excess = *current - size;
            let rest = excess - self.places.forget_permits(excess);
            if rest > 0 {
                // Taken right now: withdrawn as they come back.
                let places = self.places.clone();
                tokio::spawn(async move {
                    if let Ok(p) = places.acquire_many_owned(rest as u32).await {
                        p.forget();
                    }
                });
            }
        }
        *current = size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiters_resolve_by_packet_id_in_queue_order() {
        let acks = Acks::default();
        let mut a = acks.queue(None);
        let mut b = acks.queue(None);
        let mut c = acks.queue(None);
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

    #[tokio::test]
    async fn a_place_in_the_window_is_held_until_the_puback_or_a_lost_session() {
        let window = Window::new(2);
        let acks = Acks::default();
        let _a = acks.queue(Some(window.enter().await));
        let mut b = acks.queue(Some(window.enter().await));
        assert_eq!(window.places.available_permits(), 0);
        acks.on_outgoing_publish(1);
        acks.on_outgoing_publish(2);
        acks.on_puback(1, None);
        assert_eq!(window.places.available_permits(), 1);
        // The broker forgot the session: the publish written is not sent
        // again, its waiter hears the transport closed.
        acks.session_lost();
        assert!(matches!(
            b.try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert_eq!(window.places.available_permits(), 2);
        assert!(acks.is_idle());
    }

    #[tokio::test]
    async fn the_window_follows_the_receive_maximum() {
        assert_eq!(Window::size_for(100, 12), 86);
        assert_eq!(Window::size_for(10, 12), 1);
        let window = Window::new(3);
        let a = window.enter().await;
        let b = window.enter().await;
        window.resize(2);
        assert_eq!(window.places.available_permits(), 0);
        window.resize(1);
        // Both places are taken: one is withdrawn when it comes back.
        drop(a);
        tokio::task::yield_now().await;
        assert_eq!(window.places.available_permits(), 0);
        drop(b);
        assert_eq!(window.places.available_permits(), 1);
        window.resize(3);
        assert_eq!(window.places.available_permits(), 3);
    }

    #[test]
    fn a_request_that_was_not_queued_gives_its_waiter_back() {
        let acks = Acks::default();
        let mut a = acks.queue(None);
        let _b = acks.queue(None);
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
