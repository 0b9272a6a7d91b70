//! CPU fair sharing: which waiting guest runs next.
//!
//! A gateway runs guests on a runtime of their own with a fixed number of
//! worker threads, and hands out as many *CPU turns* as it has threads. A
//! guest holds a turn only while it is being polled, that is while its code
//! (or the host code it calls) runs; it gives the turn back whenever it
//! returns `Pending`: when it awaits I/O, a timer or the request body, and at
//! every epoch tick, where its store yields ([`crate::host::new_store`]). So
//! a spinning guest gives its turn back at least every tick.
//!
//! When a turn is free and nobody waits, a guest takes it at once (one mutex,
//! no allocation). Otherwise it joins its app's queue, and a turn given back
//! goes to the next waiter by *deficit round-robin*, first over tenants with
//! waiting guests, then over that tenant's apps with waiting guests. Each
//! tenant (and app) in the round gets [`CpuScheduler::quantum`] of credit per
//! round and is charged, after its turn, the time the turn was held: the
//! wall-clock length of the poll, which on a core the gateway has to itself
//! is the CPU the guest used. Credit cannot be banked: a tenant (or app)
//! never has more than one quantum of credit. Debt is kept (up to
//! [`MAX_DEBT`]), so a tenant whose guests ran long turns while nobody
//! waited still pays for them once others do.
//!
//! A guest joins the round when it is spawned ([`GuestTurn::queue_early`]),
//! not when its task is first polled: a guest that yields meanwhile hands it
//! the turn at that yield, rather than running one more slice while the new
//! task waits in the executor's queue.
//!
//! A guest that yields keeps its turn when nobody waits, and for up to
//! [`APP_SLICE`] when only guests of its own app wait, so one busy app is
//! not switched between its instances at every tick.
//!
//! The result: tenants with runnable guests get equal shares of the guest
//! threads, whatever their number of requests; within a tenant, its apps
//! get equal shares; a guest that just became runnable waits at most about
//! one turn per other tenant that is running.

use pin_project_lite::pin_project;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long a guest keeps its turn when only guests of its own app wait.
pub const APP_SLICE: Duration = Duration::from_millis(2);

/// Most debt a tenant or app carries.
pub const MAX_DEBT: Duration = Duration::from_millis(50);

const MAX_DEBT_NS: i64 = MAX_DEBT.as_nanos() as i64;

/// The CPU credit of a tenant or an app (nanoseconds, may be negative).
#[derive(Debug)]
pub struct CpuAccount {
    id: u64,
    deficit: AtomicI64,
}

impl CpuAccount {
    /// A fresh account numbered `id` (unique among tenants, or among apps).
    pub fn new(id: u64) -> Arc<CpuAccount> {
        Arc::new(CpuAccount {
            id,
            deficit: AtomicI64::new(0),
        })
    }

    fn deficit(&self) -> i64 {
        self.deficit.load(Ordering::Relaxed)
    }

    fn set(&self, ns: i64) {
        self.deficit.store(ns, Ordering::Relaxed);
    }

    /// Credits one quantum, never above one quantum in all: credit is not
    /// banked.
    fn credit(&self, quantum: i64) {
        self.set(self.deficit().saturating_add(quantum).min(quantum));
    }
}

/// Who a guest's CPU time is charged to: a tenant, then one of its apps.
#[derive(Clone, Debug)]
pub struct ShareKey {
    /// The tenant's account.
    pub tenant: Arc<CpuAccount>,
    /// The app's account.
    pub app: Arc<CpuAccount>,
}

/// Hands out CPU turns to guests by deficit round-robin.
pub struct CpuScheduler {
    state: Mutex<Round>,
    quantum_ns: i64,
    turns: usize,
    /// Guests that had to wait for a turn.
    waits: AtomicU64,
}

/// One waiting guest.
struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[derive(Default)]
struct Round {
    free: usize,
    waiting: usize,
    tenants: HashMap<u64, TenantQueue>,
    /// Tenants with waiting guests, in round order.
    order: VecDeque<u64>,
}

struct TenantQueue {
    account: Arc<CpuAccount>,
    /// Whether its turn in the round has begun (and been credited).
    current: bool,
    apps: HashMap<u64, AppQueue>,
    /// Apps with waiting guests, in round order.
    order: VecDeque<u64>,
}

struct AppQueue {
    account: Arc<CpuAccount>,
    current: bool,
    waiters: VecDeque<Arc<Waiter>>,
}

impl CpuScheduler {
    /// A scheduler handing out `turns` turns (at least one), crediting each
    /// tenant and app `quantum` per round.
    pub fn new(turns: usize, quantum: Duration) -> CpuScheduler {
        let turns = turns.max(1);
        CpuScheduler {
            state: Mutex::new(Round {
                free: turns,
                ..Round::default()
            }),
            quantum_ns: i64::try_from(quantum.as_nanos()).unwrap_or(i64::MAX).max(1),
            turns,
            waits: AtomicU64::new(0),
        }
    }

    /// Turns in all (the guest worker threads).
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// Credit per tenant and app per round.
    pub fn quantum(&self) -> Duration {
        Duration::from_nanos(self.quantum_ns as u64)
    }

    /// How many times a guest had to queue for a turn.
    pub fn waits(&self) -> u64 {
        self.waits.load(Ordering::Relaxed)
    }

    /// Guests waiting for a turn right now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    fn lock(&self) -> MutexGuard<'_, Round> {
        // A panic while holding the lock cannot leave the round half-updated
        // in a way that matters more than stopping all guests would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a turn for `key` now, or queues `key` and returns false.
    fn take(&self, key: &ShareKey, waiting: &mut Option<Arc<Waiter>>, cx: &Context<'_>) -> bool {
        if let Some(w) = waiting {
            if w.granted.load(Ordering::Acquire) {
                *waiting = None;
                return true;
            }
            if let Ok(mut slot) = w.waker.lock() {
                match &mut *slot {
                    Some(old) => old.clone_from(cx.waker()),
                    None => *slot = Some(cx.waker().clone()),
                }
            }
            // A grant between the check and the new waker would be lost.
            if w.granted.load(Ordering::Acquire) {
                *waiting = None;
                return true;
            }
            return false;
        }
        let mut round = self.lock();
        if round.free > 0 && round.waiting == 0 {
            round.free -= 1;
            return true;
        }
        let w = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        round.enqueue(key, w.clone());
        drop(round);
        self.waits.fetch_add(1, Ordering::Relaxed);
        *waiting = Some(w);
        false
    }

    /// Queues `key` for a turn before its task is first polled (no waker
    /// yet), unless a turn is free and nobody waits. The guest then takes
    /// part in the round from the moment it is spawned: a guest that
    /// yields meanwhile can hand it the turn at once, instead of after one
    /// more slice.
    fn queue_early(&self, key: &ShareKey, waiting: &mut Option<Arc<Waiter>>) {
        let mut round = self.lock();
        if round.free > 0 && round.waiting == 0 {
            return;
        }
        let w = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            waker: Mutex::new(None),
        });
        round.enqueue(key, w.clone());
        drop(round);
        self.waits.fetch_add(1, Ordering::Relaxed);
        *waiting = Some(w);
    }

    /// Gives a turn back, charging `key` for `held`, and hands it on.
    fn give_back(&self, key: &ShareKey, held: Duration) {
        let ns = i64::try_from(held.as_nanos()).unwrap_or(i64::MAX);
        let floor = -MAX_DEBT_NS;
        let mut round = self.lock();
        for account in [&key.tenant, &key.app] {
            account.set(account.deficit().saturating_sub(ns).max(floor));
        }
        let next = round.next_waiter(self.quantum_ns);
        if next.is_none() {
            round.free += 1;
        }
        drop(round);
        if let Some(w) = next {
            grant(&w);
        }
    }

    /// A running guest yields after running `slice` (`held` since it was
    /// last charged). It keeps its turn if nobody waits, or if only guests
    /// of its own app wait and its slice is under [`APP_SLICE`] (switching
    /// between instances of one app every tick would only thrash caches).
    /// Otherwise it queues for its next turn and its turn goes to the next
    /// waiter by the round (which may be itself). Returns whether it kept
    /// its turn.
    fn pass_on(
        &self,
        key: &ShareKey,
        held: Duration,
        slice: Duration,
        waiting: &mut Option<Arc<Waiter>>,
        cx: &Context<'_>,
    ) -> bool {
        let ns = i64::try_from(held.as_nanos()).unwrap_or(i64::MAX);
        let floor = -MAX_DEBT_NS;
        let mut round = self.lock();
        for account in [&key.tenant, &key.app] {
            account.set(account.deficit().saturating_sub(ns).max(floor));
        }
        if round.waiting == 0 || (slice < APP_SLICE && round.only(key)) {
            return true;
        }
        let w = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            waker: Mutex::new(Some(cx.waker().clone())),
        });
        round.enqueue(key, w.clone());
        let next = round.next_waiter(self.quantum_ns);
        drop(round);
        self.waits.fetch_add(1, Ordering::Relaxed);
        *waiting = Some(w);
        if let Some(next) = next {
            grant(&next);
        }
        false
    }

    /// A waiting guest went away: leave the queue, or pass on a turn it was
    /// granted but never used.
    fn leave(&self, key: &ShareKey, w: &Arc<Waiter>) {
        let mut round = self.lock();
        if !w.granted.load(Ordering::Acquire) && round.remove(key, w) {
            return;
        }
        let next = round.next_waiter(self.quantum_ns);
        if next.is_none() {
            round.free += 1;
        }
        drop(round);
        if let Some(next) = next {
            grant(&next);
        }
    }
}

fn grant(w: &Waiter) {
    w.granted.store(true, Ordering::Release);
    let waker = w.waker.lock().ok().and_then(|mut s| s.take());
    if let Some(waker) = waker {
        waker.wake();
    }
}

impl Round {
    fn enqueue(&mut self, key: &ShareKey, w: Arc<Waiter>) {
        let tenant = self.tenants.entry(key.tenant.id).or_insert_with(|| {
            self.order.push_back(key.tenant.id);
            TenantQueue {
                account: key.tenant.clone(),
                current: false,
                apps: HashMap::new(),
                order: VecDeque::new(),
            }
        });
        tenant
            .apps
            .entry(key.app.id)
            .or_insert_with(|| {
                tenant.order.push_back(key.app.id);
                AppQueue {
                    account: key.app.clone(),
                    current: false,
                    waiters: VecDeque::new(),
                }
            })
            .waiters
            .push_back(w);
        self.waiting += 1;
    }

    /// The next guest by deficit round-robin over tenants, then apps.
    fn next_waiter(&mut self, quantum: i64) -> Option<Arc<Waiter>> {
        loop {
            let tenant_id = *self.order.front()?;
            let Some(tenant) = self.tenants.get_mut(&tenant_id) else {
                self.order.pop_front();
                continue;
            };
            // A tenant's turn in the round begins with one quantum more
            // credit, and lasts while it has credit.
            if !tenant.current {
                tenant.current = true;
                tenant.account.credit(quantum);
            }
            if tenant.account.deficit() <= 0 {
                tenant.current = false;
                self.order.rotate_left(1);
                continue;
            }
            let picked = tenant.next_waiter(quantum);
            if tenant.order.is_empty() {
                self.tenants.remove(&tenant_id);
                self.order.pop_front();
            }
            if let Some(w) = picked {
                self.waiting -= 1;
                return Some(w);
            }
        }
    }

    /// Whether every waiting guest belongs to `key`'s app.
    fn only(&self, key: &ShareKey) -> bool {
        self.tenants.len() == 1
            && self
                .tenants
                .get(&key.tenant.id)
                .is_some_and(|t| t.apps.len() == 1 && t.apps.contains_key(&key.app.id))
    }

    fn remove(&mut self, key: &ShareKey, w: &Arc<Waiter>) -> bool {
        let (t, a) = (key.tenant.id, key.app.id);
        let Some(tenant) = self.tenants.get_mut(&t) else {
            return false;
        };
        let Some(app) = tenant.apps.get_mut(&a) else {
            return false;
        };
        let Some(at) = app.waiters.iter().position(|x| Arc::ptr_eq(x, w)) else {
            return false;
        };
        app.waiters.remove(at);
        self.waiting -= 1;
        if app.waiters.is_empty() {
            tenant.apps.remove(&a);
            tenant.order.retain(|x| *x != a);
        }
        if tenant.order.is_empty() {
            self.tenants.remove(&t);
            self.order.retain(|x| *x != t);
        }
        true
    }
}

impl TenantQueue {
    fn next_waiter(&mut self, quantum: i64) -> Option<Arc<Waiter>> {
        loop {
            let app_id = *self.order.front()?;
            let Some(app) = self.apps.get_mut(&app_id) else {
                self.order.pop_front();
                continue;
            };
            if !app.current {
                app.current = true;
                app.account.credit(quantum);
            }
            if app.account.deficit() <= 0 {
                app.current = false;
                self.order.rotate_left(1);
                continue;
            }
            let w = app.waiters.pop_front();
            if app.waiters.is_empty() {
                self.apps.remove(&app_id);
                self.order.pop_front();
            }
            if w.is_some() {
                return w;
            }
        }
    }
}

/// One guest's claim on CPU turns, shared by its task ([`Fair`]) and its
/// store (whose epoch callback yields through [`GuestTurn::yield_turn`]).
pub struct GuestTurn {
    scheduler: Arc<CpuScheduler>,
    key: ShareKey,
    state: Mutex<TurnState>,
}

#[derive(Default)]
struct TurnState {
    /// Holding a turn, charged up to this instant.
    held: Option<Instant>,
    /// Holding a turn since this instant.
    slice: Option<Instant>,
    /// Kept its turn at a yield: the task's next poll continues with it.
    kept: bool,
    /// Queued for a turn.
    waiting: Option<Arc<Waiter>>,
}

impl GuestTurn {
    /// A guest charged to `key`, holding no turn yet.
    pub fn new(scheduler: &Arc<CpuScheduler>, key: ShareKey) -> Arc<GuestTurn> {
        Arc::new(GuestTurn {
            scheduler: scheduler.clone(),
            key,
            state: Mutex::new(TurnState::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, TurnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a turn, or queues for one (registering `cx`'s waker).
    fn acquire(&self, cx: &Context<'_>) -> bool {
        let mut state = self.lock();
        if state.held.is_some() {
            return true;
        }
        let TurnState {
            held,
            slice,
            waiting,
            ..
        } = &mut *state;
        if self.scheduler.take(&self.key, waiting, cx) {
            let now = Instant::now();
            *held = Some(now);
            *slice = Some(now);
            return true;
        }
        false
    }

    /// Joins the round now, before the guest's task is spawned (see
    /// [`CpuScheduler::queue_early`]); its first poll then finds its turn
    /// granted, or keeps waiting for it.
    pub fn queue_early(&self) {
        let mut state = self.lock();
        if state.held.is_some() || state.waiting.is_some() {
            return;
        }
        self.scheduler.queue_early(&self.key, &mut state.waiting);
    }

    /// Gives the turn back, if held, charging the time since it was taken.
    fn release(&self) {
        let since = {
            let mut state = self.lock();
            state.slice = None;
            state.held.take()
        };
        if let Some(since) = since {
            self.scheduler.give_back(&self.key, since.elapsed());
        }
    }

    /// Queues for the next turn and hands this one on (see [`Self::yield_turn`]).
    /// Returns whether the guest kept its turn.
    fn pass_on(&self, cx: &Context<'_>) -> bool {
        let mut state = self.lock();
        let TurnState {
            held,
            slice,
            waiting,
            kept,
        } = &mut *state;
        let (Some(since), None) = (*held, waiting.as_ref()) else {
            return false;
        };
        let now = Instant::now();
        let ran = slice.map_or(Duration::ZERO, |s| now - s);
        if self
            .scheduler
            .pass_on(&self.key, now - since, ran, waiting, cx)
        {
            *held = Some(now);
            *kept = true;
            return true;
        }
        *held = None;
        *slice = None;
        false
    }

    /// After the task's poll returned `Pending`: gives the turn back unless
    /// the guest kept it at a yield.
    fn release_unless_kept(&self) {
        let kept = std::mem::take(&mut self.lock().kept);
        if !kept {
            self.release();
        }
    }

    /// Runs `future` (the guest's task) only while this guest holds a turn.
    pub fn run<F: Future>(self: Arc<Self>, future: F) -> Fair<F> {
        Fair {
            inner: future,
            turn: self,
        }
    }

    /// The future a store's epoch callback yields through: queues this
    /// guest for its next turn, hands its turn to the next guest by the
    /// round, and waits, parked, until its own turn comes (at once, after
    /// one trip through the executor, when nobody else waits).
    pub fn yield_turn(self: &Arc<Self>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(YieldTurn {
            turn: self.clone(),
            released: false,
        })
    }
}

impl Drop for GuestTurn {
    fn drop(&mut self) {
        let state = std::mem::take(&mut *self.lock());
        if let Some(since) = state.held {
            self.scheduler.give_back(&self.key, since.elapsed());
        }
        if let Some(w) = state.waiting {
            self.scheduler.leave(&self.key, &w);
        }
    }
}

struct YieldTurn {
    turn: Arc<GuestTurn>,
    released: bool,
}

impl Future for YieldTurn {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.released {
            // Always go back to the executor once: guests spawned since
            // must get polled, and so queued, before the next turn is given.
            self.released = true;
            if self.turn.pass_on(cx) {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        }
        if self.turn.acquire(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

pin_project! {
    /// A guest task polled only while it holds a CPU turn (see the module
    /// docs). Awaiting anything but its turn gives the turn back.
    pub struct Fair<F> {
        #[pin]
        inner: F,
        turn: Arc<GuestTurn>,
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if !this.turn.acquire(cx) {
            return Poll::Pending;
        }
        let out = this.inner.poll(cx);
        // Finished, or waiting for I/O, a timer or the request body: the
        // turn goes back. (A guest that yielded at its epoch tick either
        // gave it back and waits in the queue, or kept it.)
        if out.is_ready() {
            this.turn.release();
        } else {
            this.turn.release_unless_kept();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Wake;

    struct Flag(AtomicBool);
    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn cx_waker() -> Waker {
        Waker::from(Arc::new(Flag(AtomicBool::new(false))))
    }

    /// Keys for `n` apps of tenant `t`, all with their own app account
    /// unless `shared` (one app).
    fn tenant(t: u64) -> Arc<CpuAccount> {
        CpuAccount::new(t)
    }

    fn key(tenant: &Arc<CpuAccount>, app: &Arc<CpuAccount>) -> ShareKey {
        ShareKey {
            tenant: tenant.clone(),
            app: app.clone(),
        }
    }

    /// Spinning guests (one per key) share one turn: each runs, is charged
    /// `cost`, and queues again at its next poll. Returns who ran, in order.
    fn spin_order(
        keys: &[ShareKey],
        cost: impl Fn(&ShareKey) -> Duration,
        n: usize,
    ) -> Vec<ShareKey> {
        let s = CpuScheduler::new(1, Duration::from_millis(1));
        let waker = cx_waker();
        let cx = Context::from_waker(&waker);
        let mut waiting: Vec<(ShareKey, Option<Arc<Waiter>>)> = Vec::new();
        let mut running = keys[0].clone();
        assert!(s.take(&running, &mut None, &cx));
        for k in &keys[1..] {
            let mut w = None;
            assert!(!s.take(k, &mut w, &cx));
            waiting.push((k.clone(), w));
        }
        let mut order = vec![running.clone()];
        for _ in 1..n {
            s.give_back(&running, cost(&running));
            // The guest that gave its turn back queues at its next poll.
            let mut again = None;
            assert!(!s.take(&running, &mut again, &cx));
            waiting.push((running.clone(), again));
            let at = waiting
                .iter()
                .position(|(_, w)| w.as_ref().is_some_and(|w| w.granted.load(Ordering::SeqCst)))
                .expect("a turn was handed on");
            let (k, mut w) = waiting.remove(at);
            assert!(s.take(&k, &mut w, &cx));
            order.push(k.clone());
            running = k;
        }
        order
    }

    #[test]
    fn a_free_turn_is_taken_without_waiting() {
        let s = Arc::new(CpuScheduler::new(2, Duration::from_millis(1)));
        let waker = cx_waker();
        let cx = Context::from_waker(&waker);
        let (t1, t2) = (tenant(1), tenant(2));
        let (k1, k2) = (key(&t1, &tenant(1)), key(&t2, &tenant(2)));
        assert!(s.take(&k1, &mut None, &cx));
        assert!(s.take(&k1, &mut None, &cx));
        let mut w = None;
        assert!(!s.take(&k2, &mut w, &cx), "both turns are held");
        assert_eq!(s.waiting(), 1);
        s.give_back(&k1, Duration::from_micros(10));
        assert!(s.take(&k2, &mut w, &cx), "the turn went to the waiter");
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn a_guest_queued_at_spawn_gets_the_next_yield_before_its_first_poll() {
        let s = Arc::new(CpuScheduler::new(1, Duration::from_millis(1)));
        let waker = cx_waker();
        let cx = Context::from_waker(&waker);
        let (noisy, quiet) = (tenant(1), tenant(2));
        let spinner = GuestTurn::new(&s, key(&noisy, &tenant(1)));
        assert!(spinner.acquire(&cx));
        // A second noisy guest waits; then a quiet one is spawned.
        let other = GuestTurn::new(&s, key(&noisy, &tenant(1)));
        assert!(!other.acquire(&cx));
        let early = GuestTurn::new(&s, key(&quiet, &tenant(2)));
        early.queue_early();
        assert_eq!(s.waiting(), 2);
        // The spinner yields at its tick, well past its app slice: the
        // quiet tenant's guest gets the turn though its task never ran.
        std::thread::sleep(APP_SLICE);
        assert!(!spinner.pass_on(&cx), "the spinner had to hand its turn on");
        assert!(early.acquire(&cx), "the early guest's first poll runs");
        assert!(!other.acquire(&cx));
        // Queueing early is a no-op for a guest already in the round, and
        // dropping a waiting guest leaves the queue.
        early.queue_early();
        drop(other);
        assert_eq!(s.waiting(), 1, "only the spinner waits");
    }

    #[test]
    fn tenants_alternate_whatever_their_number_of_guests() {
        // Tenant 1 has ten spinning guests of one app, tenant 2 one guest.
        let (t1, t2, a1, a2) = (tenant(1), tenant(2), tenant(1), tenant(2));
        let mut keys: Vec<ShareKey> = (0..10).map(|_| key(&t1, &a1)).collect();
        keys.push(key(&t2, &a2));
        let order = spin_order(&keys, |_| Duration::from_millis(1), 200);
        let n2 = order.iter().filter(|k| k.tenant.id == 2).count();
        assert!((95..=105).contains(&n2), "tenant 2 got {n2} of 200 turns");
    }

    #[test]
    fn shares_are_by_cpu_used_not_by_turns() {
        // Tenant 1's turns cost 3 ms, tenant 2's 1 ms: tenant 2 gets about
        // three turns for each of tenant 1's, and CPU splits evenly.
        let (t1, t2, a1, a2) = (tenant(1), tenant(2), tenant(1), tenant(2));
        let keys = [key(&t1, &a1), key(&t1, &a1), key(&t2, &a2), key(&t2, &a2)];
        let cost = |k: &ShareKey| Duration::from_millis(if k.tenant.id == 1 { 3 } else { 1 });
        let order = spin_order(&keys, cost, 400);
        let used = |t: u64| -> u128 {
            order
                .iter()
                .filter(|k| k.tenant.id == t)
                .map(|k| cost(k).as_millis())
                .sum()
        };
        let (a, b) = (used(1), used(2));
        let ratio = a as f64 / b as f64;
        assert!((0.8..1.25).contains(&ratio), "tenant CPU {a} ms vs {b} ms");
    }

    #[test]
    fn a_single_guest_tenant_with_long_turns_is_charged_too() {
        // Tenant 1: one guest whose turns cost 4 ms; tenant 2: many 1 ms guests.
        let (t1, t2, a1, a2) = (tenant(1), tenant(2), tenant(1), tenant(2));
        let mut keys = vec![key(&t1, &a1)];
        keys.extend((0..5).map(|_| key(&t2, &a2)));
        let cost = |k: &ShareKey| Duration::from_millis(if k.tenant.id == 1 { 4 } else { 1 });
        let order = spin_order(&keys, cost, 500);
        let used = |t: u64| -> u128 {
            order
                .iter()
                .filter(|k| k.tenant.id == t)
                .map(|k| cost(k).as_millis())
                .sum()
        };
        let ratio = used(1) as f64 / used(2) as f64;
        assert!((0.75..1.33).contains(&ratio), "CPU ratio {ratio}");
    }

    #[test]
    fn within_a_tenant_apps_share_equally() {
        let (t1, t3, a1, a2, a3) = (tenant(1), tenant(3), tenant(1), tenant(2), tenant(3));
        let mut keys: Vec<ShareKey> = (0..8).map(|_| key(&t1, &a1)).collect();
        keys.push(key(&t1, &a2));
        keys.push(key(&t3, &a3));
        let order = spin_order(&keys, |_| Duration::from_millis(1), 400);
        let app2 = order.iter().filter(|k| k.app.id == 2).count();
        let n3 = order.iter().filter(|k| k.tenant.id == 3).count();
        assert!((190..=210).contains(&n3), "tenant 3 got {n3} of 400");
        assert!((90..=110).contains(&app2), "app 2 got {app2} of 400");
    }

    #[test]
    fn a_waiter_that_goes_away_passes_on_its_turn() {
        let s = Arc::new(CpuScheduler::new(1, Duration::from_millis(1)));
        let waker = cx_waker();
        let cx = Context::from_waker(&waker);
        let keys: Vec<ShareKey> = (1..=5).map(|i| key(&tenant(i), &tenant(i))).collect();
        assert!(s.take(&keys[0], &mut None, &cx));
        let mut gone = None;
        let mut stays = None;
        assert!(!s.take(&keys[1], &mut gone, &cx));
        assert!(!s.take(&keys[2], &mut stays, &cx));
        // Dropped while queued: leaves the queue.
        s.leave(&keys[1], &gone.unwrap());
        assert_eq!(s.waiting(), 1);
        s.give_back(&keys[0], Duration::ZERO);
        assert!(s.take(&keys[2], &mut stays, &cx));
        // Granted but dropped before running: the turn is not lost.
        let mut granted = None;
        assert!(!s.take(&keys[3], &mut granted, &cx));
        s.give_back(&keys[2], Duration::ZERO);
        s.leave(&keys[3], &granted.unwrap());
        assert!(s.take(&keys[4], &mut None, &cx), "the turn came back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fair_futures_run_to_completion_and_return_their_turns() {
        let s = Arc::new(CpuScheduler::new(1, Duration::from_millis(1)));
        let (k1, k2) = (key(&tenant(1), &tenant(1)), key(&tenant(2), &tenant(2)));
        let t1 = GuestTurn::new(&s, k1);
        let a = t1.clone().run(async move {
            tokio::task::yield_now().await;
            t1.yield_turn().await;
            1
        });
        let b = GuestTurn::new(&s, k2.clone()).run(async {
            tokio::task::yield_now().await;
            2
        });
        let (a, b) = tokio::join!(a, b);
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.waiting(), 0);
        let waker = cx_waker();
        assert!(s.take(&k2, &mut None, &Context::from_waker(&waker)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_new_guest_runs_within_a_few_turns_of_a_hundred_spinners() {
        // One turn; a hundred guests of one tenant spin in turns of about
        // 100 µs, yielding as a store does at its epoch tick.
        let s = Arc::new(CpuScheduler::new(1, Duration::from_micros(100)));
        let noisy = tenant(1);
        let spin_app = tenant(2);
        let spinning = Arc::new(AtomicBool::new(true));
        let mut spinners = Vec::new();
        for _ in 0..100 {
            let turn = GuestTurn::new(&s, key(&noisy, &spin_app));
            let inner = turn.clone();
            let flag = spinning.clone();
            spinners.push(tokio::spawn(turn.run(async move {
                while flag.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(100) {
                        std::hint::spin_loop();
                    }
                    inner.yield_turn().await;
                }
            })));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let quiet = GuestTurn::new(&s, key(&tenant(3), &tenant(4)));
        let start = Instant::now();
        tokio::spawn(quiet.run(async {})).await.unwrap();
        let waited = start.elapsed();
        spinning.store(false, Ordering::Relaxed);
        for t in spinners {
            t.await.unwrap();
        }
        // FIFO would be about 100 turns (10 ms); fair is about two.
        assert!(waited < Duration::from_millis(3), "waited {waited:?}");
        assert!(s.waits() >= 1, "the new guest queued for its turn");
    }
}
