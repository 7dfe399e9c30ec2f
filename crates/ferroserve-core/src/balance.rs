//! The balancer: one per deployment, shared by HTTP traffic and handle calls, over endpoints it
//! knows only by their load.
//!
//! An endpoint is anything that serves calls (a replica in this process, later one in another
//! process); the balancer never learns which. It counts the requests it has placed on each
//! endpoint (its load) and asks the endpoint one question, whether it holds a multiplexed model
//! ([`Endpoint::holds_model`]). As tower's `p2c::Balance` over a `Discover`, it only chooses.
//!
//! State machine of a request:
//! 1. **Pick**: if nobody is queued, choose two endpoints at random (power of two choices) and
//!    take a slot on the less loaded one whose load is below `max_ongoing_requests`; if both
//!    are full, try every endpoint. Lock-free: one compare-and-swap on an atomic counter.
//! 2. **Queue**: when every endpoint is full (or others are already waiting) the request joins a
//!    FIFO queue, unless `max_queued_requests` requests already wait, in which case it is
//!    rejected with [`Error::Backpressure`].
//! 3. **Hand-off**: a finishing request releases its slot; if anyone waits, the slot goes to the
//!    head of the queue.
//! 4. **Abandon**: a queued request whose future is dropped leaves the queue at once; if a slot
//!    had just been handed to it, the slot is released again.
//!
//! `max_ongoing_requests` is strict: an endpoint never holds more requests than that.
//!
//! A request that names a model first tries, in step 1, the least loaded endpoint that holds the
//! model and has a free slot (a lock-free scan), then falls back to the power of two choices.
//! The queue does not look at model ids: a queued request goes to whichever endpoint frees a
//! slot first. Requests without a model id take the unchanged path.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::sync::lock;

/// What the balancer asks of an endpoint beyond its load (which it counts itself).
pub trait Endpoint: Send + Sync + 'static {
    /// Whether the endpoint holds (or is loading) multiplexed model `model_id`: requests for
    /// it go there first. Called on the request path; must be cheap and lock-free.
    fn holds_model(&self, model_id: &str) -> bool;
}

/// An endpoint in a balancer, with the requests the balancer has placed on it.
pub struct Member<E: ?Sized> {
    in_flight: AtomicUsize,
    endpoint: E,
}

impl<E> Member<E> {
    /// A member for `endpoint`, holding nothing yet.
    pub fn new(endpoint: E) -> Arc<Self> {
        Arc::new(Member {
            in_flight: AtomicUsize::new(0),
            endpoint,
        })
    }
}

impl<E: ?Sized> Member<E> {
    /// The endpoint.
    pub fn endpoint(&self) -> &E {
        &self.endpoint
    }

    /// Its load: requests placed on it and not yet finished.
    pub fn load(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Takes a slot if fewer than `max` requests run here.
    fn try_take(&self, max: usize) -> bool {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }
}

struct Queue<E: ?Sized> {
    next_seq: u64,
    waiters: BTreeMap<u64, oneshot::Sender<Arc<Member<E>>>>,
}

/// Balances one deployment's requests over its endpoints. See the [module docs](self).
pub struct Balancer<E: ?Sized> {
    name: Arc<str>,
    members: ArcSwap<Vec<Arc<Member<E>>>>,
    max_ongoing: AtomicUsize,
    /// `usize::MAX` is unlimited.
    max_queued: AtomicUsize,
    queued: AtomicUsize,
    queue: Mutex<Queue<E>>,
    /// Signalled when a request queues while no endpoint is routed to.
    demand: tokio::sync::Notify,
}

impl<E: ?Sized> std::fmt::Debug for Balancer<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("deployment", &self.name)
            .field("endpoints", &self.members.load().len())
            .field("queued", &self.queued.load(Relaxed))
            .finish()
    }
}

impl<E: ?Sized + Endpoint> Balancer<E> {
    /// A balancer for deployment `name` with no endpoints yet.
    pub fn new(name: Arc<str>, max_ongoing: usize, max_queued: Option<usize>) -> Self {
        Balancer {
            name,
            members: ArcSwap::from_pointee(Vec::new()),
            max_ongoing: AtomicUsize::new(max_ongoing),
            max_queued: AtomicUsize::new(max_queued.unwrap_or(usize::MAX)),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                next_seq: 0,
                waiters: BTreeMap::new(),
            }),
            demand: tokio::sync::Notify::new(),
        }
    }

    /// The deployment's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Replaces the endpoint set and serves waiting requests.
    pub fn set_members(&self, members: Vec<Arc<Member<E>>>) {
        self.members.store(Arc::new(members));
        self.dispatch(&mut self.lock());
    }

    /// Adds one endpoint and serves waiting requests.
    ///
    /// Atomic against other changes of the set (read, copy, compare-and-swap), so a supervisor
    /// retiring an endpoint and a config update adding one never lose each other's change.
    pub fn add(&self, member: Arc<Member<E>>) {
        self.members.rcu(|current| {
            let mut members = current.to_vec();
            members.push(member.clone());
            members
        });
        self.dispatch(&mut self.lock());
    }

    /// Stops choosing `retire` at once (atomically, like [`Balancer::add`]). Requests they
    /// hold run on.
    pub fn remove(&self, retire: &[Arc<Member<E>>]) {
        if retire.is_empty() {
            return;
        }
        self.members.rcu(|current| {
            current
                .iter()
                .filter(|m| !retire.iter().any(|x| Arc::ptr_eq(x, m)))
                .cloned()
                .collect::<Vec<_>>()
        });
    }

    /// The endpoints chosen from now.
    pub fn members(&self) -> Arc<Vec<Arc<Member<E>>>> {
        self.members.load_full()
    }

    /// Number of endpoints chosen from.
    pub fn len(&self) -> usize {
        self.members.load().len()
    }

    /// Whether there is no endpoint to choose from.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Completes when a request has queued while no endpoint is routed to (the autoscaler
    /// starts one). A signal sent while nobody waits is kept for the next call. Cancel safe.
    pub async fn demand(&self) {
        self.demand.notified().await;
    }

    /// Changes the limits in place; waiting requests are served at once if the new cap allows.
    pub fn set_limits(&self, max_ongoing: usize, max_queued: Option<usize>) {
        self.max_ongoing.store(max_ongoing, SeqCst);
        self.max_queued
            .store(max_queued.unwrap_or(usize::MAX), SeqCst);
        self.dispatch(&mut self.lock());
    }

    /// Requests waiting for a slot.
    pub fn num_queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Requests holding a slot on some endpoint chosen from.
    pub fn num_ongoing(&self) -> usize {
        self.members.load().iter().map(|m| m.load()).sum()
    }

    fn lock(&self) -> MutexGuard<'_, Queue<E>> {
        lock(&self.queue)
    }

    /// Power of two choices, then a full scan, so that we only queue when every endpoint is
    /// full.
    fn try_pick(&self) -> Option<Arc<Member<E>>> {
        let members = self.members.load();
        let n = members.len();
        let max = self.max_ongoing.load(Relaxed);
        match n {
            0 => return None,
            1 => {
                let m = &members[0];
                return m.try_take(max).then(|| m.clone());
            }
            _ => {}
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (first, second) = if members[a].load() <= members[b].load() {
            (a, b)
        } else {
            (b, a)
        };
        for i in [first, second] {
            if members[i].try_take(max) {
                return Some(members[i].clone());
            }
        }
        members.iter().find(|m| m.try_take(max)).cloned()
    }

    /// The least loaded endpoint holding model `id` with a free slot, its slot taken.
    /// Lock-free.
    fn try_pick_holding(&self, id: &str) -> Option<Arc<Member<E>>> {
        let members = self.members.load();
        let max = self.max_ongoing.load(Relaxed);
        // A lost race for the last slot rescans; bounded so that churn cannot spin forever.
        for _ in 0..members.len() {
            let best = members
                .iter()
                .filter(|m| m.load() < max && m.endpoint.holds_model(id))
                .min_by_key(|m| m.load())?;
            if best.try_take(max) {
                return Some(best.clone());
            }
        }
        None
    }

    /// Serves queued requests from the head while slots are free. Called with the queue locked.
    fn dispatch(&self, queue: &mut Queue<E>) {
        while let Some(entry) = queue.waiters.first_entry() {
            let Some(member) = self.try_pick() else {
                break;
            };
            let tx = entry.remove();
            self.queued.fetch_sub(1, SeqCst);
            if let Err(member) = tx.send(member) {
                // Unreachable in practice (waiters leave the map before dropping their receiver),
                // but never leak a slot.
                member.in_flight.fetch_sub(1, SeqCst);
            }
        }
    }

    fn release(&self, member: &Member<E>) {
        member.in_flight.fetch_sub(1, SeqCst);
        // Pairs with the SeqCst increment of `queued` in `acquire`: either we see the waiter, or
        // the waiter's own dispatch sees our free slot.
        if self.queued.load(SeqCst) > 0 {
            self.dispatch(&mut self.lock());
        }
    }

    /// As [`Balancer::acquire`], preferring an endpoint that holds model `model_id` when one is
    /// given (see the module docs). Cancel safe.
    pub fn acquire_for(self: &Arc<Self>, model_id: Option<&str>) -> Acquire<E> {
        if let Some(id) = model_id {
            if self.queued.load(SeqCst) == 0 {
                if let Some(member) = self.try_pick_holding(id) {
                    return Acquire::Ready(Some(Slot {
                        balancer: self.clone(),
                        member,
                    }));
                }
            }
        }
        self.acquire()
    }

    /// Waits for a slot on some endpoint, in FIFO order behind earlier waiters.
    ///
    /// Fails at once with [`Error::Backpressure`] when `max_queued_requests` are already
    /// waiting, and with [`Error::ShuttingDown`] if the balancer is dropped while it waits.
    /// Cancel safe: dropping the future removes the request from the queue immediately.
    pub fn acquire(self: &Arc<Self>) -> Acquire<E> {
        if self.queued.load(SeqCst) == 0 {
            if let Some(member) = self.try_pick() {
                return Acquire::Ready(Some(Slot {
                    balancer: self.clone(),
                    member,
                }));
            }
        }
        let mut queue = self.lock();
        let max = self.max_queued.load(Relaxed);
        if max != usize::MAX {
            let num_queued = queue.waiters.len();
            if num_queued >= max {
                return Acquire::Rejected(Some(Error::Backpressure {
                    num_queued,
                    max_queued: max,
                }));
            }
        }
        let seq = queue.next_seq;
        queue.next_seq += 1;
        let (tx, rx) = oneshot::channel();
        queue.waiters.insert(seq, tx);
        self.queued.fetch_add(1, SeqCst);
        self.dispatch(&mut queue);
        drop(queue);
        if self.members.load().is_empty() {
            self.demand.notify_one();
        }
        Acquire::Waiting(Waiter {
            balancer: self.clone(),
            seq,
            rx: Some(rx),
        })
    }
}

/// A slot on one endpoint; released (and handed to the next waiter) when dropped.
pub struct Slot<E: ?Sized + Endpoint> {
    balancer: Arc<Balancer<E>>,
    member: Arc<Member<E>>,
}

impl<E: ?Sized + Endpoint> Slot<E> {
    /// The endpoint the slot is on.
    pub fn endpoint(&self) -> &E {
        &self.member.endpoint
    }

    /// The member the slot is on.
    pub fn member(&self) -> &Arc<Member<E>> {
        &self.member
    }

    /// The member the slot is on, as a reference of its own (for work that outlives a borrow
    /// of the slot; the slot itself is what counts the load).
    pub fn clone_endpoint(&self) -> Arc<Member<E>> {
        self.member.clone()
    }

    /// The balancer the slot belongs to.
    pub fn balancer(&self) -> &Arc<Balancer<E>> {
        &self.balancer
    }
}

impl<E: ?Sized + Endpoint> std::fmt::Debug for Slot<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("deployment", self.balancer.name())
            .field("load", &self.member.load())
            .finish()
    }
}

impl<E: ?Sized + Endpoint> Drop for Slot<E> {
    fn drop(&mut self) {
        self.balancer.release(&self.member);
    }
}

/// The future returned by [`Balancer::acquire`]: a slot, now or once one is free.
pub enum Acquire<E: ?Sized + Endpoint> {
    /// A slot was free.
    #[doc(hidden)]
    Ready(Option<Slot<E>>),
    /// The queue was full.
    #[doc(hidden)]
    Rejected(Option<Error>),
    /// In the queue.
    #[doc(hidden)]
    Waiting(Waiter<E>),
}

/// A place in a balancer's queue; leaves it when dropped.
#[doc(hidden)]
pub struct Waiter<E: ?Sized + Endpoint> {
    balancer: Arc<Balancer<E>>,
    seq: u64,
    rx: Option<oneshot::Receiver<Arc<Member<E>>>>,
}

impl<E: ?Sized + Endpoint> Future for Acquire<E> {
    type Output = Result<Slot<E>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Acquire::Ready(slot) => Poll::Ready(Ok(slot.take().expect("polled after completion"))),
            Acquire::Rejected(err) => {
                Poll::Ready(Err(err.take().expect("polled after completion")))
            }
            Acquire::Waiting(w) => {
                let rx = w.rx.as_mut().expect("polled after completion");
                match Pin::new(rx).poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(result) => {
                        w.rx = None;
                        Poll::Ready(match result {
                            Ok(member) => Ok(Slot {
                                balancer: w.balancer.clone(),
                                member,
                            }),
                            Err(_) => Err(Error::ShuttingDown(w.balancer.name.to_string())),
                        })
                    }
                }
            }
        }
    }
}

impl<E: ?Sized + Endpoint> Drop for Waiter<E> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut queue = self.balancer.lock();
        if queue.waiters.remove(&self.seq).is_some() {
            self.balancer.queued.fetch_sub(1, SeqCst);
            return;
        }
        drop(queue);
        // We were served between the last poll and the drop: give the slot back.
        if let Ok(member) = rx.try_recv() {
            self.balancer.release(&member);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    /// A test endpoint: an id and the models it holds.
    struct Fake {
        id: String,
        models: Vec<&'static str>,
    }

    impl Endpoint for Fake {
        fn holds_model(&self, model_id: &str) -> bool {
            self.models.contains(&model_id)
        }
    }

    fn fake(id: impl ToString, models: &[&'static str]) -> Arc<Member<Fake>> {
        Member::new(Fake {
            id: id.to_string(),
            models: models.to_vec(),
        })
    }

    fn balancer(
        endpoints: usize,
        max_ongoing: usize,
        max_queued: Option<usize>,
    ) -> Arc<Balancer<Fake>> {
        let b = Arc::new(Balancer::new("d".into(), max_ongoing, max_queued));
        b.set_members((0..endpoints).map(|i| fake(i, &[])).collect());
        b
    }

    fn id(slot: &Slot<Fake>) -> String {
        slot.endpoint().id.clone()
    }

    #[test]
    fn cap_is_strict_and_queue_is_fifo() {
        let b = balancer(2, 2, None);
        let slots: Vec<_> = (0..4)
            .map(|_| b.acquire().now_or_never().unwrap().unwrap())
            .collect();
        assert_eq!(b.num_ongoing(), 4);
        let mut first = b.acquire();
        let mut second = b.acquire();
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(b.num_queued(), 2);
        let mut slots = slots;
        drop(slots.remove(0));
        assert!((&mut second).now_or_never().is_none(), "FIFO: head first");
        let got = (&mut first).now_or_never().unwrap().unwrap();
        assert_eq!(b.num_ongoing(), 4);
        assert_eq!(b.num_queued(), 1);
        drop(got);
        assert!(second.now_or_never().unwrap().is_ok());
    }

    #[test]
    fn backpressure_beyond_max_queued() {
        let b = balancer(1, 1, Some(1));
        let _slot = b.acquire().now_or_never().unwrap().unwrap();
        let _queued = b.acquire();
        let err = b.acquire().now_or_never().unwrap().err().unwrap();
        assert_eq!(
            err.to_string(),
            "Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1)."
        );
    }

    #[test]
    fn abandoned_waiters_leave_at_once_even_after_hand_off() {
        let b = balancer(1, 1, None);
        let slot = b.acquire().now_or_never().unwrap().unwrap();
        let waiters: Vec<_> = (0..10_000).map(|_| b.acquire()).collect();
        assert_eq!(b.num_queued(), 10_000);
        // Hand the slot to the head, then drop everyone without polling.
        drop(slot);
        assert_eq!(b.num_queued(), 9_999);
        drop(waiters);
        assert_eq!(b.num_queued(), 0);
        assert_eq!(b.num_ongoing(), 0);
    }

    #[test]
    fn a_model_goes_to_the_least_loaded_holder_with_a_free_slot_then_anywhere() {
        let b = Arc::new(Balancer::new("d".into(), 2, None));
        b.set_members(vec![fake(0, &[]), fake(1, &["m"]), fake(2, &["m", "n"])]);
        let take = |model| b.acquire_for(model).now_or_never().unwrap().unwrap();
        let held: Vec<_> = (0..4).map(|_| take(Some("m"))).collect();
        let mut ids: Vec<_> = held.iter().map(id).collect();
        ids.sort();
        assert_eq!(ids, ["1", "1", "2", "2"], "holders first, balanced");
        assert_eq!(id(&take(Some("m"))), "0", "holders full: anywhere");
        drop(held);
        let on_2 = take(Some("n"));
        assert_eq!(id(&on_2), "2");
        let on_1 = take(Some("m"));
        assert_eq!(id(&on_1), "1", "least loaded holder");
        assert_eq!(b.num_ongoing(), 2);
    }

    #[test]
    fn model_requests_queue_fifo_behind_earlier_waiters() {
        let b = Arc::new(Balancer::new("d".into(), 1, None));
        b.set_members(vec![fake(0, &["m"]), fake(1, &[])]);
        let x = b.acquire().now_or_never().unwrap().unwrap();
        let y = b.acquire().now_or_never().unwrap().unwrap();
        let mut first = b.acquire();
        let mut second = b.acquire_for(Some("m"));
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        drop(if id(&x) == "0" { x } else { y });
        assert!((&mut second).now_or_never().is_none(), "FIFO: head first");
        assert_eq!(id(&first.now_or_never().unwrap().unwrap()), "0");
    }

    #[test]
    fn concurrent_adds_and_removals_lose_nothing() {
        let b = balancer(0, 1, None);
        let old: Vec<_> = (0..500).map(|i| fake(format!("old{i}"), &[])).collect();
        b.set_members(old.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..500 {
                    b.add(fake(format!("new{i}"), &[]));
                }
            });
            s.spawn(|| {
                for member in &old {
                    b.remove(std::slice::from_ref(member));
                }
            });
        });
        let ids: Vec<_> = b
            .members()
            .iter()
            .map(|m| m.endpoint().id.clone())
            .collect();
        assert_eq!(ids.len(), 500, "every add kept, every removal applied");
        assert!(ids.iter().all(|id| id.starts_with("new")));
    }

    #[test]
    fn no_endpoints_means_wait_until_one_is_added() {
        let b = balancer(0, 1, None);
        let mut w = b.acquire();
        assert!((&mut w).now_or_never().is_none());
        b.add(fake(0, &[]));
        assert!(w.now_or_never().unwrap().is_ok());
    }

    #[test]
    fn a_removed_endpoint_finishes_its_requests_and_gets_no_new_ones() {
        let b = balancer(1, 10, None);
        let held: Vec<_> = (0..5)
            .map(|_| b.acquire().now_or_never().unwrap().unwrap())
            .collect();
        let first = b.members()[0].clone();
        b.add(fake(1, &[]));
        b.remove(std::slice::from_ref(&first));
        assert_eq!(first.load(), 5, "still holds its requests");
        for _ in 0..5 {
            assert_eq!(id(&b.acquire().now_or_never().unwrap().unwrap()), "1");
        }
        drop(held);
        assert_eq!(first.load(), 0);
    }

    /// Raising `max_ongoing_requests` serves waiters at once; the queue limit applies to new
    /// arrivals only.
    #[test]
    fn new_limits_take_effect_in_place() {
        let b = balancer(1, 1, Some(5));
        let _held = b.acquire().now_or_never().unwrap().unwrap();
        let mut waiting = b.acquire();
        assert!((&mut waiting).now_or_never().is_none());
        b.set_limits(2, Some(0));
        assert!(
            waiting.now_or_never().unwrap().is_ok(),
            "served by the new cap"
        );
        let _full = b.acquire();
        assert!(matches!(
            b.acquire().now_or_never().unwrap(),
            Err(Error::Backpressure { max_queued: 0, .. })
        ));
    }

    /// A request that queues while nothing serves wakes whoever waits on `demand` (the
    /// autoscaler, when scaled to zero), even if it started waiting later.
    #[tokio::test(start_paused = true)]
    async fn queueing_with_no_endpoint_signals_demand() {
        let b = balancer(0, 1, None);
        let waiter = b.acquire();
        tokio::time::timeout(std::time::Duration::from_secs(1), b.demand())
            .await
            .expect("demand signalled");
        drop(waiter);
    }
}
