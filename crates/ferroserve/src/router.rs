//! The router: one per deployment, shared by HTTP traffic and handle calls.
//!
//! State machine of a request:
//! 1. **Pick**: if nobody is queued, choose two replicas at random (power of two choices) and take a
//!    slot on the less loaded one whose in-flight count is below `max_ongoing_requests`; if both
//!    are full, try every replica. Lock-free: one compare-and-swap on an atomic counter.
//! 2. **Queue**: when every replica is full (or others are already waiting) the request joins a
//!    FIFO queue, unless `max_queued_requests` requests already wait, in which case it is rejected
//!    with [`Error::Backpressure`].
//! 3. **Hand-off**: a finishing request releases its slot; if anyone waits, the slot goes to the
//!    head of the queue.
//! 4. **Abandon**: a queued request whose future is dropped leaves the queue at once; if a slot had
//!    just been handed to it, the slot is released again.
//!
//! `max_ongoing_requests` is strict: a replica never runs more requests than that.
//!
//! A request that names a model ([`crate::multiplex`]) first tries, in step 1, the least loaded
//! replica that holds the model and has a free slot (a scan of the replicas' published model ids,
//! lock-free), then falls back to the power of two choices. The queue does not look at model
//! ids: a queued request goes to whichever replica frees a slot first. Requests without a model
//! id take the unchanged path.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use arc_swap::ArcSwap;
use tokio::sync::oneshot;

use crate::error::Error;
use crate::multiplex::ModelIds;

/// One running instance of a deployment's type, with its in-flight count.
pub(crate) struct Replica<T> {
    pub(crate) instance: Arc<T>,
    pub(crate) id: String,
    /// The replica's HTTP app (axum router), built on first use by an API ingress.
    pub(crate) http: OnceLock<crate::api::HttpApp>,
    /// The model ids this replica's [`crate::multiplex::Multiplexed`] caches hold.
    pub(crate) models: Arc<ModelIds>,
    /// Who this replica is, for log lines (built on its first request).
    pub(crate) labels: OnceLock<Arc<crate::metrics::ReplicaLabels>>,
    in_flight: AtomicUsize,
}

impl<T> Replica<T> {
    pub(crate) fn new(instance: T, id: String) -> Self {
        Replica {
            instance: Arc::new(instance),
            id,
            http: OnceLock::new(),
            models: Arc::new(ModelIds::new()),
            labels: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
        }
    }

    /// Requests running on this replica now.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(SeqCst)
    }

    /// Takes a slot if fewer than `max` requests run here.
    fn try_take(&self, max: usize) -> bool {
        self.in_flight
            .fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok()
    }
}

struct Queue<T> {
    next_seq: u64,
    waiters: BTreeMap<u64, oneshot::Sender<Arc<Replica<T>>>>,
}

/// Routes requests for one deployment to its replicas. See the module docs.
pub(crate) struct Router<T> {
    name: Arc<str>,
    replicas: ArcSwap<Vec<Arc<Replica<T>>>>,
    max_ongoing: AtomicUsize,
    /// `usize::MAX` is unlimited.
    max_queued: AtomicUsize,
    queued: AtomicUsize,
    queue: Mutex<Queue<T>>,
    /// Cold bookkeeping for status reports and replica ids.
    next_id: AtomicUsize,
    starting: AtomicUsize,
    stopping: Mutex<Vec<Arc<Replica<T>>>>,
    /// Signalled when a request queues while no replica runs.
    demand: tokio::sync::Notify,
    /// The deployment's replica-side metric series, resolved once.
    metrics: Arc<crate::metrics::DeploymentMetrics>,
}

impl<T: Send + Sync + 'static> Router<T> {
    pub(crate) fn new(name: String, max_ongoing: usize, max_queued: Option<usize>) -> Self {
        let name: Arc<str> = name.into();
        Router {
            metrics: Arc::new(crate::metrics::DeploymentMetrics::new(&name)),
            name,
            replicas: ArcSwap::from_pointee(Vec::new()),
            max_ongoing: AtomicUsize::new(max_ongoing),
            max_queued: AtomicUsize::new(max_queued.unwrap_or(usize::MAX)),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                next_seq: 0,
                waiters: BTreeMap::new(),
            }),
            next_id: AtomicUsize::new(0),
            starting: AtomicUsize::new(0),
            stopping: Mutex::new(Vec::new()),
            demand: tokio::sync::Notify::new(),
        }
    }

    /// The deployment's name.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The deployment's metric series.
    pub(crate) fn metrics(&self) -> &Arc<crate::metrics::DeploymentMetrics> {
        &self.metrics
    }

    /// Replaces the replica set (the controller is the only writer) and serves waiting requests.
    pub(crate) fn set_replicas(&self, replicas: Vec<Arc<Replica<T>>>) {
        self.replicas.store(Arc::new(replicas));
        self.dispatch(&mut self.lock());
    }

    /// Adds one replica to the routed set and serves waiting requests.
    ///
    /// Atomic against other changes of the set (read, copy, compare-and-swap), so a supervisor
    /// retiring a replica and a config update adding one never lose each other's change.
    pub(crate) fn add_replica(&self, replica: Arc<Replica<T>>) {
        self.replicas.rcu(|current| {
            let mut replicas = current.to_vec();
            replicas.push(replica.clone());
            replicas
        });
        self.dispatch(&mut self.lock());
    }

    /// Stops routing to `retire`, then waits (up to `timeout`) until their in-flight requests
    /// are done. Each instance is dropped when its last request ends, whether or not the wait
    /// timed out.
    pub(crate) async fn drain(&self, retire: &[Arc<Replica<T>>], timeout: std::time::Duration) {
        self.retire(retire);
        self.wait_retired(retire, timeout).await;
    }

    /// Stops routing to `retire` at once (atomically, like [`Router::add_replica`]); they show
    /// as stopping until [`Router::wait_retired`] is done with them.
    pub(crate) fn retire(&self, retire: &[Arc<Replica<T>>]) {
        if retire.is_empty() {
            return;
        }
        // Atomic against concurrent changes of the set, as in `add_replica`.
        self.replicas.rcu(|current| {
            current
                .iter()
                .filter(|r| !retire.iter().any(|x| Arc::ptr_eq(x, r)))
                .cloned()
                .collect::<Vec<_>>()
        });
        self.stopping_list().extend(retire.iter().cloned());
    }

    /// Waits (up to `timeout`) until retired replicas have finished their in-flight requests.
    pub(crate) async fn wait_retired(
        &self,
        retire: &[Arc<Replica<T>>],
        timeout: std::time::Duration,
    ) {
        if retire.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        // A controller-side poll, off the request path: the replica count is small and a 10 ms
        // granularity is far below any drain timeout.
        while retire.iter().any(|r| r.in_flight() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if let Some(busy) = retire.iter().find(|r| r.in_flight() > 0) {
            tracing::warn!(replica = %busy.id, "replica still busy after {timeout:?}; it stops when its last request ends");
        }
        self.stopping_list()
            .retain(|r| !retire.iter().any(|x| Arc::ptr_eq(x, r)));
        for r in retire {
            tracing::info!(replica = %r.id, "replica stopped");
        }
    }

    /// Completes when a request has queued while no replica runs (the autoscaler starts one).
    /// A signal sent while nobody waits is kept for the next call.
    pub(crate) async fn demand(&self) {
        self.demand.notified().await;
    }

    fn stopping_list(&self) -> MutexGuard<'_, Vec<Arc<Replica<T>>>> {
        self.stopping.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next replica number (`Deployment#n`), unique across versions of the deployment.
    pub(crate) fn next_replica_id(&self) -> usize {
        self.next_id.fetch_add(1, SeqCst)
    }

    /// Counts a replica under construction until the guard drops.
    pub(crate) fn starting(&self) -> impl Drop + '_ {
        struct Starting<'a>(&'a AtomicUsize);
        impl Drop for Starting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, SeqCst);
            }
        }
        self.starting.fetch_add(1, SeqCst);
        Starting(&self.starting)
    }

    /// Every replica with its state, for status reports.
    pub(crate) fn replica_infos(&self) -> Vec<crate::deployment::ReplicaInfo> {
        use crate::deployment::{ReplicaInfo, ReplicaState};
        let info = |r: &Arc<Replica<T>>, state| ReplicaInfo {
            replica_id: r.id.clone(),
            state,
            ongoing_requests: r.in_flight(),
            multiplexed_model_ids: r.models.list(),
        };
        let mut out: Vec<_> = self
            .replicas()
            .iter()
            .map(|r| info(r, ReplicaState::Running))
            .collect();
        out.extend(
            self.stopping_list()
                .iter()
                .map(|r| info(r, ReplicaState::Stopping)),
        );
        for _ in 0..self.starting.load(SeqCst) {
            out.push(ReplicaInfo {
                replica_id: format!("{}#?", self.name),
                state: ReplicaState::Starting,
                ongoing_requests: 0,
                multiplexed_model_ids: Vec::new(),
            });
        }
        out
    }

    /// Number of replicas currently routed to.
    pub(crate) fn num_replicas(&self) -> usize {
        self.replicas.load().len()
    }

    /// The replicas currently routed to.
    pub(crate) fn replicas(&self) -> Arc<Vec<Arc<Replica<T>>>> {
        self.replicas.load_full()
    }

    /// Changes the limits in place; waiting requests are served at once if the new cap allows.
    pub(crate) fn set_limits(&self, max_ongoing: usize, max_queued: Option<usize>) {
        self.max_ongoing.store(max_ongoing, SeqCst);
        self.max_queued
            .store(max_queued.unwrap_or(usize::MAX), SeqCst);
        self.dispatch(&mut self.lock());
    }

    /// Requests waiting for a slot.
    pub(crate) fn num_queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Requests holding a slot on some replica.
    pub(crate) fn num_ongoing(&self) -> usize {
        self.replicas
            .load()
            .iter()
            .map(|r| r.in_flight.load(SeqCst))
            .sum()
    }

    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        // The queue holds no invariant a panic could break half-way; keep serving.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Power of two choices, then a full scan, so that we only queue when every replica is full.
    fn try_pick(&self) -> Option<Arc<Replica<T>>> {
        let replicas = self.replicas.load();
        let n = replicas.len();
        let max = self.max_ongoing.load(Relaxed);
        match n {
            0 => return None,
            1 => {
                let r = &replicas[0];
                return r.try_take(max).then(|| r.clone());
            }
            _ => {}
        }
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        let (first, second) =
            if replicas[a].in_flight.load(SeqCst) <= replicas[b].in_flight.load(SeqCst) {
                (a, b)
            } else {
                (b, a)
            };
        for i in [first, second] {
            if replicas[i].try_take(max) {
                return Some(replicas[i].clone());
            }
        }
        replicas.iter().find(|r| r.try_take(max)).cloned()
    }

    /// The least loaded replica holding model `id` with a free slot, its slot taken. Lock-free.
    fn try_pick_holding(&self, id: &str) -> Option<Arc<Replica<T>>> {
        let replicas = self.replicas.load();
        let max = self.max_ongoing.load(Relaxed);
        // A lost race for the last slot rescans; bounded so that churn cannot spin forever.
        for _ in 0..replicas.len() {
            let best = replicas
                .iter()
                .filter(|r| r.in_flight.load(SeqCst) < max && r.models.holds(id))
                .min_by_key(|r| r.in_flight.load(SeqCst))?;
            if best.try_take(max) {
                return Some(best.clone());
            }
        }
        None
    }

    /// Serves queued requests from the head while slots are free. Called with the queue locked.
    fn dispatch(&self, queue: &mut Queue<T>) {
        while let Some(entry) = queue.waiters.first_entry() {
            let Some(replica) = self.try_pick() else {
                break;
            };
            let tx = entry.remove();
            self.queued.fetch_sub(1, SeqCst);
            if let Err(replica) = tx.send(replica) {
                // Unreachable in practice (waiters leave the map before dropping their receiver),
                // but never leak a slot.
                replica.in_flight.fetch_sub(1, SeqCst);
            }
        }
    }

    fn release(&self, replica: &Replica<T>) {
        replica.in_flight.fetch_sub(1, SeqCst);
        // Pairs with the SeqCst increment of `queued` in `acquire`: either we see the waiter, or
        // the waiter's own dispatch sees our free slot.
        if self.queued.load(SeqCst) > 0 {
            self.dispatch(&mut self.lock());
        }
    }

    /// As [`Router::acquire`], preferring a replica that holds model `model_id` when one is
    /// given (see the module docs). Cancel safe.
    pub(crate) fn acquire_for(self: &Arc<Self>, model_id: Option<&str>) -> Acquire<T> {
        if let Some(id) = model_id {
            if self.queued.load(SeqCst) == 0 {
                if let Some(replica) = self.try_pick_holding(id) {
                    return Acquire::Ready(Some(Slot {
                        router: self.clone(),
                        replica,
                    }));
                }
            }
        }
        self.acquire()
    }

    /// Waits for a slot on some replica, in FIFO order behind earlier waiters.
    ///
    /// Fails at once with [`Error::Backpressure`] when `max_queued_requests` are already waiting.
    /// Cancel safe: dropping the future removes the request from the queue immediately.
    pub(crate) fn acquire(self: &Arc<Self>) -> Acquire<T> {
        if self.queued.load(SeqCst) == 0 {
            if let Some(replica) = self.try_pick() {
                return Acquire::Ready(Some(Slot {
                    router: self.clone(),
                    replica,
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
        if self.replicas.load().is_empty() {
            self.demand.notify_one();
        }
        Acquire::Waiting(Waiter {
            router: self.clone(),
            seq,
            rx: Some(rx),
        })
    }
}

/// A slot on one replica; released (and handed to the next waiter) when dropped.
pub(crate) struct Slot<T: Send + Sync + 'static> {
    router: Arc<Router<T>>,
    replica: Arc<Replica<T>>,
}

impl<T: Send + Sync + 'static> Slot<T> {
    pub(crate) fn replica(&self) -> &Replica<T> {
        &self.replica
    }
}

impl<T: Send + Sync + 'static> Drop for Slot<T> {
    fn drop(&mut self) {
        self.router.release(&self.replica);
    }
}

/// The future returned by [`Router::acquire`].
pub(crate) enum Acquire<T: Send + Sync + 'static> {
    Ready(Option<Slot<T>>),
    Rejected(Option<Error>),
    Waiting(Waiter<T>),
}

pub(crate) struct Waiter<T: Send + Sync + 'static> {
    router: Arc<Router<T>>,
    seq: u64,
    rx: Option<oneshot::Receiver<Arc<Replica<T>>>>,
}

impl<T: Send + Sync + 'static> Future for Acquire<T> {
    type Output = Result<Slot<T>, Error>;

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
                            Ok(replica) => Ok(Slot {
                                router: w.router.clone(),
                                replica,
                            }),
                            Err(_) => Err(Error::ShuttingDown(w.router.name.to_string())),
                        })
                    }
                }
            }
        }
    }
}

impl<T: Send + Sync + 'static> Drop for Waiter<T> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut queue = self.router.lock();
        if queue.waiters.remove(&self.seq).is_some() {
            self.router.queued.fetch_sub(1, SeqCst);
            return;
        }
        drop(queue);
        // We were served between the last poll and the drop: give the slot back.
        if let Ok(replica) = rx.try_recv() {
            self.router.release(&replica);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn router(replicas: usize, max_ongoing: usize, max_queued: Option<usize>) -> Arc<Router<()>> {
        let r = Arc::new(Router::new("d".into(), max_ongoing, max_queued));
        r.set_replicas(
            (0..replicas)
                .map(|i| Arc::new(Replica::new((), i.to_string())))
                .collect(),
        );
        r
    }

    #[test]
    fn cap_is_strict_and_queue_is_fifo() {
        let r = router(2, 2, None);
        let slots: Vec<_> = (0..4)
            .map(|_| r.acquire().now_or_never().unwrap().unwrap())
            .collect();
        assert_eq!(r.num_ongoing(), 4);
        let mut first = r.acquire();
        let mut second = r.acquire();
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        assert_eq!(r.num_queued(), 2);
        let mut slots = slots;
        drop(slots.remove(0));
        assert!((&mut second).now_or_never().is_none(), "FIFO: head first");
        let got = (&mut first).now_or_never().unwrap().unwrap();
        assert_eq!(r.num_ongoing(), 4);
        assert_eq!(r.num_queued(), 1);
        drop(got);
        assert!(second.now_or_never().unwrap().is_ok());
    }

    #[test]
    fn backpressure_beyond_max_queued() {
        let r = router(1, 1, Some(1));
        let _slot = r.acquire().now_or_never().unwrap().unwrap();
        let _queued = r.acquire();
        let err = r.acquire().now_or_never().unwrap().err().unwrap();
        assert_eq!(
            err.to_string(),
            "Request dropped due to backpressure (num_queued_requests=1, max_queued_requests=1)."
        );
    }

    #[test]
    fn abandoned_waiters_leave_at_once_even_after_hand_off() {
        let r = router(1, 1, None);
        let slot = r.acquire().now_or_never().unwrap().unwrap();
        let waiters: Vec<_> = (0..10_000).map(|_| r.acquire()).collect();
        assert_eq!(r.num_queued(), 10_000);
        // Hand the slot to the head, then drop everyone without polling.
        drop(slot);
        assert_eq!(r.num_queued(), 9_999);
        drop(waiters);
        assert_eq!(r.num_queued(), 0);
        assert_eq!(r.num_ongoing(), 0);
    }

    #[test]
    fn a_model_goes_to_the_least_loaded_holder_with_a_free_slot_then_anywhere() {
        let r = router(3, 2, None);
        let replicas = r.replicas();
        replicas[1].models.set(0, vec!["m".into()]);
        replicas[2].models.set(0, vec!["m".into(), "n".into()]);
        let take = |model| r.acquire_for(model).now_or_never().unwrap().unwrap();
        let id = |slot: &Slot<()>| slot.replica().id.clone();
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
        assert_eq!(r.num_ongoing(), 2);
    }

    #[test]
    fn model_requests_queue_fifo_behind_earlier_waiters() {
        let r = router(2, 1, None);
        r.replicas()[0].models.set(0, vec!["m".into()]);
        let a = r.acquire().now_or_never().unwrap().unwrap();
        let b = r.acquire().now_or_never().unwrap().unwrap();
        let mut first = r.acquire();
        let mut second = r.acquire_for(Some("m"));
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        drop(if a.replica().id == "0" { a } else { b });
        assert!((&mut second).now_or_never().is_none(), "FIFO: head first");
        assert_eq!(first.now_or_never().unwrap().unwrap().replica().id, "0");
    }

    #[test]
    fn concurrent_adds_and_retirements_lose_nothing() {
        let r = router(0, 1, None);
        let old: Vec<_> = (0..500)
            .map(|i| Arc::new(Replica::new((), format!("old{i}"))))
            .collect();
        r.set_replicas(old.clone());
        std::thread::scope(|s| {
            s.spawn(|| {
                for i in 0..500 {
                    r.add_replica(Arc::new(Replica::new((), format!("new{i}"))));
                }
            });
            s.spawn(|| {
                for replica in &old {
                    r.retire(std::slice::from_ref(replica));
                }
            });
        });
        let ids: Vec<_> = r.replicas().iter().map(|x| x.id.clone()).collect();
        assert_eq!(ids.len(), 500, "every add kept, every retirement applied");
        assert!(ids.iter().all(|id| id.starts_with("new")));
    }

    #[test]
    fn no_replicas_means_wait_until_set() {
        let r = Arc::new(Router::<()>::new("d".into(), 1, None));
        let mut w = r.acquire();
        assert!((&mut w).now_or_never().is_none());
        r.set_replicas(vec![Arc::new(Replica::new((), "0".into()))]);
        assert!(w.now_or_never().unwrap().is_ok());
    }
}
