//! Where idle connections wait without a task of their own.
//!
//! A task is the largest thing an idle connection holds: tokio's cell around the serving future, ~900
//! bytes of the ~3 KB an idle connection cost, for as long as it is connected. Mosquitto holds no
//! such thing: one loop polls every socket. This is that shape with tokio's reactor as the loop. A
//! connection that has had nothing to do for a while ([`Dormitory::after`]) hands itself in here and
//! its task ends. One task, the ward, keeps every such [`Sleeper`] in a slab with a waker of its own,
//! which the sleeper registers wherever its work comes from (its socket, its outbox); when one fires,
//! or the sleeper's alarm (its keep-alive's deadline) comes, the ward gives it a task again. A
//! sleeper costs its own state and ~80 bytes here; a wake-up costs one task spawned.
//!
//! A sleeper's socket may leave tokio's reactor too ([`Sleeper::socket`]), whose entry for it is 256
//! bytes. The ward then watches it in an epoll of its own, the *watch*: a kernel entry per socket, and
//! one entry in the reactor for the watch itself, readable whenever one of its sockets is. A rest
//! then costs four `epoll_ctl` calls: off the reactor, into the watch, out of it, back on.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use mio::unix::SourceFd;
use slab::Slab;
use tokio::io::unix::AsyncFd;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How finely alarms are kept: a sleeper is woken at most this long after its alarm.
const TICK: Duration = Duration::from_millis(50);

/// Something that can wait here: a connection with nothing to do.
pub trait Sleeper: Send + 'static {
    /// Registers `cx`'s waker wherever work for it comes from; ready if there is work now.
    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// When it must be woken even without work (a keep-alive's deadline), if ever.
    fn alarm(&self) -> Option<Instant>;
    /// A socket it took off tokio's reactor, which the ward watches for readability (or its peer's
    /// end) in its stead; the same from its arrival until it is woken.
    fn socket(&self) -> Option<RawFd> {
        None
    }
    /// Gives it a task again, tracked by `tracker`.
    fn wake(self: Box<Self>, tracker: &TaskTracker);
}

/// The handle connections hand themselves in through; cheap to share.
#[derive(Clone)]
pub struct Dormitory {
    shared: Arc<Shared>,
}

struct Shared {
    /// Idle this long, a connection may come here (zero: never).
    after: Duration,
    /// The ward runs and takes sleepers.
    open: AtomicBool,
    news: Mutex<News>,
    /// The ward's task, while it waits for news.
    ward: AtomicWaker,
    /// Sleepers in the ward now (for `emq_recon`).
    sleeping: AtomicUsize,
}

/// What the ward has to look at: sleepers handed in, and wakers fired since its last look.
#[derive(Default)]
struct News {
    arrivals: Vec<Box<dyn Sleeper>>,
    woken: Vec<Key>,
}

impl Shared {
    fn news(&self) -> MutexGuard<'_, News> {
        // A panic while holding this lock leaves two lists that are still valid lists.
        self.news.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bed in the ward: its place in the slab, and which of the sleepers to have had that place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// The key as the watch's token, and back: both halves in one `usize` (a 64-bit target).
    fn token(self) -> mio::Token {
        mio::Token(((self.index as u64) << 32 | self.generation as u64) as usize)
    }

    fn from_token(token: mio::Token) -> Key {
        let token = token.0 as u64;
        Key { index: (token >> 32) as u32, generation: token as u32 }
    }
}

/// A sleeper's waker: tells the ward which bed to look at.
struct Alarm {
    shared: Arc<Shared>,
    key: Key,
}

impl Wake for Alarm {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.news().woken.push(self.key);
        self.shared.ward.wake();
    }
}

impl Dormitory {
    /// A dormitory for connections idle for `after` (zero: none ever sleeps); it takes none until
    /// [`Dormitory::run`] runs.
    pub fn new(after: Duration) -> Dormitory {
        let shared = Shared {
            after,
            open: AtomicBool::new(false),
            news: Mutex::default(),
            ward: AtomicWaker::new(),
            sleeping: AtomicUsize::new(0),
        };
        Dormitory { shared: Arc::new(shared) }
    }

    /// How long a connection must have been idle to come here, while the ward takes sleepers.
    pub fn after(&self) -> Option<Duration> {
        let open = self.shared.open.load(Ordering::Acquire);
        (open && !self.shared.after.is_zero()).then_some(self.shared.after)
    }

    /// How many rest here now.
    pub fn sleeping(&self) -> usize {
        self.shared.sleeping.load(Ordering::Relaxed)
    }

    /// Takes a sleeper in, or gives it back if the ward has closed (it keeps its task then).
    pub fn admit<S: Sleeper>(&self, sleeper: Box<S>) -> Result<(), Box<S>> {
        let mut news = self.shared.news();
        // Checked under the lock the ward closes under: nobody is left behind in a closed ward.
        if !self.shared.open.load(Ordering::Acquire) {
            return Err(sleeper);
        }
        news.arrivals.push(sleeper);
        drop(news);
        self.shared.ward.wake();
        Ok(())
    }

    /// The ward: keeps the sleepers until each has work or its alarm comes, and gives it a task in
    /// `tracker` then. At `shutdown`, wakes everyone (to see the shutdown) and closes.
    pub fn run(&self, tracker: TaskTracker, shutdown: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            if shared.after.is_zero() {
                return;
            }
            let (mut watch, registry) = match Watch::new() {
                Ok(watch) => watch,
                Err(e) => {
                    tracing::warn!(error = %e, "idle connections keep their tasks: no epoll for the dormitory");
                    return;
                }
            };
            shared.open.store(true, Ordering::Release);
            let mut ward = Ward::new(shared.clone(), tracker, registry);
            let mut news = News::default();
            let mut alarm = pin!(sleep_until(Instant::now()));
            let mut armed = None;
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break,
                    ready = watch.ready() => match ready {
                        Ok(keys) => keys.into_iter().for_each(|key| ward.wake(key)),
                        Err(e) => {
                            tracing::error!(error = %e, "the dormitory's epoll failed: waking every idle connection");
                            break;
                        }
                    },
                    _ = std::future::poll_fn(|cx| poll_news(&shared, cx, &mut news)) => {
                        for sleeper in news.arrivals.drain(..) {
                            ward.admit(sleeper);
                        }
                        for key in news.woken.drain(..) {
                            ward.look(key);
                        }
                        // A storm of arrivals leaves these long; kept long, they would cost each
                        // session that outlives its connection a share of them.
                        news.arrivals.shrink_to(NEWS_KEPT);
                        news.woken.shrink_to(NEWS_KEPT);
                    }
                    _ = &mut alarm, if armed.is_some() => {
                        ward.ring(Instant::now());
                        armed = None;
                    }
                }
                let next = ward.next_alarm();
                if next != armed {
                    if let Some(at) = next {
                        alarm.as_mut().reset(at);
                    }
                    armed = next;
                }
                shared.sleeping.store(ward.beds.len(), Ordering::Relaxed);
            }
            let arrivals = {
                let mut news = shared.news();
                shared.open.store(false, Ordering::Release);
                std::mem::take(&mut news.arrivals)
            };
            for sleeper in arrivals {
                sleeper.wake(&ward.tracker);
            }
            ward.wake_all();
            shared.sleeping.store(0, Ordering::Relaxed);
        }
    }
}

/// Ready with the news (swapped into `news`, which must be empty) once there is any.
fn poll_news(shared: &Shared, cx: &mut Context<'_>, news: &mut News) -> Poll<()> {
    // Registered before looking, so news after the look wakes the ward.
    shared.ward.register(cx.waker());
    let mut waiting = shared.news();
    if waiting.arrivals.is_empty() && waiting.woken.is_empty() {
        return Poll::Pending;
    }
    std::mem::swap(&mut waiting.arrivals, &mut news.arrivals);
    std::mem::swap(&mut waiting.woken, &mut news.woken);
    Poll::Ready(())
}

/// The ward's epoll, for the sockets sleepers took off tokio's reactor; its own file descriptor is in
/// the reactor, readable while any of them is.
struct Watch {
    poll: AsyncFd<mio::Poll>,
    events: mio::Events,
}

impl Watch {
    /// The watch, and the handle the ward adds and removes sockets through.
    fn new() -> io::Result<(Watch, mio::Registry)> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        // SAFETY: the `Poll` owns its epoll descriptor and closes it only when dropped, which is when the
        // `AsyncFd` owning it drops; nothing replaces the `Poll` in it (`ready` only polls it).
        let poll = unsafe { AsyncFd::register_with_interest(poll, tokio::io::Interest::READABLE) }?;
        Ok((Watch { poll, events: mio::Events::with_capacity(256) }, registry))
    }

    /// The beds whose sockets became readable (or closed), once there are any.
    async fn ready(&mut self) -> io::Result<Vec<Key>> {
        loop {
            let mut guard = self.poll.readable_mut().await?;
            let mut keys = Vec::new();
            // Emptied before the readiness is cleared: an event that comes after the last look makes
            // the watch readable again, since its readiness then changed after this guard was taken.
            loop {
                match guard.get_inner_mut().poll(&mut self.events, Some(Duration::ZERO)) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    result => result?,
                }
                let before = keys.len();
                keys.extend(self.events.iter().map(|event| Key::from_token(event.token())));
                if keys.len() - before < self.events.capacity() {
                    break;
                }
            }
            guard.clear_ready();
            if !keys.is_empty() {
                return Ok(keys);
            }
        }
    }
}

/// The ward's own state, in its task alone.
struct Ward {
    shared: Arc<Shared>,
    tracker: TaskTracker,
    /// Where sleepers' sockets are watched (see [`Watch`]).
    registry: mio::Registry,
    beds: Slab<Bed>,
    generation: u32,
    /// Alarms by tick (counted from `epoch`): the beds to look at then. A sleeper woken before its
    /// alarm is taken out of its tick's list, which holds those due in the same 50 ms.
    alarms: BTreeMap<u64, Vec<Key>>,
    epoch: Instant,
}

/// Kept small: the slab holds up to twice as many beds as sleepers, since it grows by doubling.
struct Bed {
    sleeper: Box<dyn Sleeper>,
    generation: u32,
    waker: Waker,
    /// The tick whose list holds its alarm ([`NO_ALARM`]: none).
    alarm_tick: u64,
}

const NO_ALARM: u64 = u64::MAX;

/// How many entries the ward's news lists keep room for once handled.
const NEWS_KEPT: usize = 64;

/// A slab with room for more beds than this is let go of once it is empty (a slab cannot shrink
/// while any bed is taken, since wakers name beds by their place).
const BEDS_KEPT: usize = 1024;

impl Ward {
    fn new(shared: Arc<Shared>, tracker: TaskTracker, registry: mio::Registry) -> Ward {
        let epoch = Instant::now();
        Ward { shared, tracker, registry, beds: Slab::new(), generation: 0, alarms: BTreeMap::new(), epoch }
    }

    fn admit(&mut self, mut sleeper: Box<dyn Sleeper>) {
        self.generation = self.generation.wrapping_add(1);
        let key = Key { index: self.beds.vacant_key() as u32, generation: self.generation };
        let waker = Waker::from(Arc::new(Alarm { shared: self.shared.clone(), key }));
        // Looked at once on arrival: this registers its waker, and work that came after it chose to
        // sleep wakes it at once.
        if sleeper.poll_work(&mut Context::from_waker(&waker)).is_ready() {
            sleeper.wake(&self.tracker);
            return;
        }
        // Added to the watch, a socket already readable is reported at once.
        if let Some(fd) = sleeper.socket() {
            if let Err(e) = self.registry.register(&mut SourceFd(&fd), key.token(), mio::Interest::READABLE) {
                tracing::warn!(error = %e, "an idle connection keeps its task: its socket cannot be watched");
                sleeper.wake(&self.tracker);
                return;
            }
        }
        let alarm_tick = match sleeper.alarm() {
            Some(at) => self.file_alarm(at, key),
            None => NO_ALARM,
        };
        self.beds.insert(Bed { sleeper, generation: key.generation, waker, alarm_tick });
    }

    /// A sleeper's waker fired: work for it, or a stale readiness.
    fn look(&mut self, key: Key) {
        let Some(bed) = self.bed(key) else { return };
        if bed.sleeper.poll_work(&mut Context::from_waker(&bed.waker)).is_ready() {
            self.wake(key);
        }
    }

    /// Wakes whoever's alarm has come.
    fn ring(&mut self, now: Instant) {
        let passed = self.tick_before(now);
        while let Some(entry) = self.alarms.first_entry() {
            if *entry.key() > passed {
                break;
            }
            for key in entry.remove() {
                let Some(bed) = self.bed(key) else { continue };
                bed.alarm_tick = NO_ALARM;
                match bed.sleeper.alarm() {
                    Some(at) if at > now => {
                        let tick = self.file_alarm(at, key);
                        if let Some(bed) = self.bed(key) {
                            bed.alarm_tick = tick;
                        }
                    }
                    _ => self.wake(key),
                }
            }
        }
    }

    fn next_alarm(&self) -> Option<Instant> {
        let (&tick, _) = self.alarms.first_key_value()?;
        Some(self.epoch + Duration::from_nanos(TICK.as_nanos() as u64 * tick))
    }

    fn bed(&mut self, key: Key) -> Option<&mut Bed> {
        self.beds.get_mut(key.index as usize).filter(|bed| bed.generation == key.generation)
    }

    /// Gives the sleeper in `key`'s bed a task again, if it is still there.
    fn wake(&mut self, key: Key) {
        if self.bed(key).is_none() {
            return;
        }
        let bed = self.beds.remove(key.index as usize);
        if self.beds.is_empty() && self.beds.capacity() > BEDS_KEPT {
            // Stale wakers still name places in the old slab; the generation tells them apart.
            self.beds = Slab::new();
        }
        self.unwatch(&bed);
        if let Some(list) = self.alarms.get_mut(&bed.alarm_tick) {
            if let Some(at) = list.iter().position(|k| *k == key) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.alarms.remove(&bed.alarm_tick);
            }
        }
        bed.sleeper.wake(&self.tracker);
    }

    /// Files `key`'s alarm at `at` under its tick, and returns the tick.
    fn file_alarm(&mut self, at: Instant, key: Key) -> u64 {
        let tick = self.tick_after(at);
        self.alarms.entry(tick).or_default().push(key);
        tick
    }

    fn wake_all(&mut self) {
        for bed in std::mem::take(&mut self.beds).drain() {
            self.unwatch(&bed);
            bed.sleeper.wake(&self.tracker);
        }
        self.alarms.clear();
    }

    /// Takes a bed's socket out of the watch, before its sleeper puts it back on tokio's reactor.
    fn unwatch(&self, bed: &Bed) {
        if let Some(fd) = bed.sleeper.socket() {
            // It cannot fail for a socket the watch holds; were it to, the next readiness would find
            // no bed under its key.
            let _ = self.registry.deregister(&mut SourceFd(&fd));
        }
    }

    /// The first tick at or after `at`: by then, `at` has passed.
    fn tick_after(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        since.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    /// The last tick at or before `now`.
    fn tick_before(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_nanos() / TICK.as_nanos()) as u64
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::sync::mpsc;

    use super::*;

    /// A sleeper whose work is a flag, woken through the waker it registered.
    struct Fake {
        name: &'static str,
        work: Arc<(AtomicBool, Mutex<Option<Waker>>)>,
        alarm: Option<Instant>,
        woke: mpsc::UnboundedSender<&'static str>,
        /// A socket for the watch, owned by the test.
        socket: Option<RawFd>,
    }

    impl Sleeper for Fake {
        fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<()> {
            *self.work.1.lock().unwrap() = Some(cx.waker().clone());
            if self.work.0.load(Ordering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }

        fn alarm(&self) -> Option<Instant> {
            self.alarm
        }

        fn socket(&self) -> Option<RawFd> {
            self.socket
        }

        fn wake(self: Box<Self>, _: &TaskTracker) {
            let _ = self.woke.send(self.name);
        }
    }

    /// A watch's registry, for a ward made by hand.
    fn registry() -> mio::Registry {
        mio::Poll::new().and_then(|poll| poll.registry().try_clone()).expect("an epoll")
    }

    #[tokio::test]
    async fn sleepers_wake_for_work_for_their_alarm_and_at_shutdown() {
        let dormitory = Dormitory::new(Duration::from_secs(1));
        assert_eq!(dormitory.after(), None, "closed until the ward runs");
        let shutdown = CancellationToken::new();
        let ward = tokio::spawn(dormitory.run(TaskTracker::new(), shutdown.clone()));
        while dormitory.after().is_none() {
            tokio::task::yield_now().await;
        }
        let (woke, mut woken) = mpsc::unbounded_channel();
        let sleeper = |name, alarm| {
            let work = Arc::new((AtomicBool::new(false), Mutex::new(None)));
            (Box::new(Fake { name, work: work.clone(), alarm, woke: woke.clone(), socket: None }), work)
        };
        let (quiet, quiet_work) = sleeper("quiet", None);
        let (busy, busy_work) = sleeper("busy", None);
        busy_work.0.store(true, Ordering::Release);
        let (alarmed, _) = sleeper("alarmed", Some(Instant::now() + Duration::from_millis(200)));
        let (early, early_work) = sleeper("early", Some(Instant::now() + Duration::from_secs(60)));
        let (last, _) = sleeper("last", None);
        for s in [quiet, busy, alarmed, last, early] {
            assert!(dormitory.admit(s).is_ok());
        }
        assert_eq!(woken.recv().await, Some("busy"), "work that came before it rested wakes it at once");
        early_work.0.store(true, Ordering::Release);
        early_work.1.lock().unwrap().take().expect("its waker registered").wake();
        assert_eq!(woken.recv().await, Some("early"), "work wakes it long before its alarm");

        let asleep = std::time::Instant::now();
        quiet_work.0.store(true, Ordering::Release);
        quiet_work.1.lock().unwrap().take().expect("its waker registered").wake();
        assert_eq!(woken.recv().await, Some("quiet"));
        assert_eq!(woken.recv().await, Some("alarmed"));
        let waited = asleep.elapsed();
        assert!(waited >= Duration::from_millis(150) && waited < Duration::from_millis(1000), "{waited:?}");
        assert_eq!(dormitory.sleeping(), 1);

        shutdown.cancel();
        assert_eq!(woken.recv().await, Some("last"), "shutdown wakes whoever still rests");
        ward.await.unwrap();
        let (late, _) = sleeper("late", None);
        assert!(dormitory.admit(late).is_err(), "a closed ward gives a sleeper back");
        assert_eq!(dormitory.after(), None);
    }

    /// A sleeper woken by work leaves nothing in the alarm list, however far off its alarm was: a
    /// chatty client that rests between messages must not pile up an entry per rest.
    #[tokio::test]
    async fn a_sleeper_woken_by_work_takes_its_alarm_along() {
        let dormitory = Dormitory::new(Duration::from_secs(1));
        let mut ward = Ward::new(dormitory.shared.clone(), TaskTracker::new(), registry());
        let (woke, mut woken) = mpsc::unbounded_channel();
        for round in 0..3 {
            let work = Arc::new((AtomicBool::new(false), Mutex::new(None)));
            let alarm = Some(Instant::now() + Duration::from_secs(60));
            ward.admit(Box::new(Fake { name: "chatty", work: work.clone(), alarm, woke: woke.clone(), socket: None }));
            assert_eq!(ward.alarms.values().map(Vec::len).sum::<usize>(), 1, "round {round}");
            work.0.store(true, Ordering::Release);
            let key = Key { index: 0, generation: ward.generation };
            ward.look(key);
            assert_eq!(woken.try_recv(), Ok("chatty"));
            assert!(ward.alarms.is_empty() && ward.beds.is_empty(), "round {round}");
        }
    }

    /// A storm of sleepers that all leave gives its slab back: a kept session must not pay for the
    /// beds its connection once rested in.
    #[tokio::test]
    async fn an_emptied_ward_lets_its_beds_go() {
        let dormitory = Dormitory::new(Duration::from_secs(1));
        let mut ward = Ward::new(dormitory.shared.clone(), TaskTracker::new(), registry());
        let (woke, mut woken) = mpsc::unbounded_channel();
        let mut keys = Vec::new();
        for _ in 0..3 * BEDS_KEPT {
            let work = Arc::new((AtomicBool::new(false), Mutex::new(None)));
            ward.admit(Box::new(Fake { name: "storm", work, alarm: None, woke: woke.clone(), socket: None }));
            keys.push(Key { index: keys.len() as u32, generation: ward.generation });
        }
        assert!(ward.beds.capacity() >= 3 * BEDS_KEPT);
        let last = keys.pop().unwrap();
        for key in keys {
            ward.wake(key);
        }
        assert!(ward.beds.capacity() >= 3 * BEDS_KEPT, "one still rests: its place is kept");
        ward.wake(last);
        assert_eq!(ward.beds.capacity(), 0, "empty, the slab is let go of");
        assert_eq!(std::iter::from_fn(|| woken.try_recv().ok()).count(), 3 * BEDS_KEPT);
        ward.wake(last);
        assert!(woken.try_recv().is_err(), "a stale key wakes nobody");
    }

    /// A sleeper's socket, watched by the ward: its data wakes it, as does its peer's end, and one
    /// woken leaves the watch (a second rest of the same socket would fail to join it otherwise, and
    /// wake at once).
    #[tokio::test]
    async fn a_sleepers_socket_wakes_it() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        use std::os::unix::net::UnixStream;

        let dormitory = Dormitory::new(Duration::from_secs(1));
        let shutdown = CancellationToken::new();
        let ward = tokio::spawn(dormitory.run(TaskTracker::new(), shutdown.clone()));
        while dormitory.after().is_none() {
            tokio::task::yield_now().await;
        }
        let (woke, mut woken) = mpsc::unbounded_channel();
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let fd = ours.as_raw_fd();
        let rest = |name| {
            let work = Arc::new((AtomicBool::new(false), Mutex::new(None)));
            let socket = Some(fd);
            assert!(dormitory.admit(Box::new(Fake { name, work, alarm: None, woke: woke.clone(), socket })).is_ok());
        };
        let quiet = Duration::from_millis(200);
        for round in ["first", "second"] {
            rest(round);
            assert!(tokio::time::timeout(quiet, woken.recv()).await.is_err(), "{round}: a quiet socket lets it sleep");
            theirs.write_all(b"x").unwrap();
            assert_eq!(woken.recv().await, Some(round), "data on its socket wakes it");
            assert_eq!((&ours).read(&mut [0]).unwrap(), 1);
        }
        theirs.write_all(b"y").unwrap();
        rest("already readable");
        assert_eq!(woken.recv().await, Some("already readable"), "data that came first wakes it at once");
        assert_eq!((&ours).read(&mut [0]).unwrap(), 1);
        rest("hung up");
        drop(theirs);
        assert_eq!(woken.recv().await, Some("hung up"), "its peer's end wakes it");
        assert_eq!(dormitory.sleeping(), 0);
        shutdown.cancel();
        ward.await.unwrap();
    }

    #[test]
    fn alarms_are_rounded_up_to_the_tick_never_down() {
        let dormitory = Dormitory::new(Duration::ZERO);
        let ward = Ward::new(dormitory.shared.clone(), TaskTracker::new(), registry());
        let on_a_tick = ward.epoch + TICK * 3;
        assert_eq!(ward.tick_after(on_a_tick), 3);
        assert_eq!(ward.tick_after(on_a_tick + Duration::from_nanos(1)), 4);
        assert_eq!(ward.tick_before(on_a_tick + TICK - Duration::from_nanos(1)), 3);
        assert_eq!(ward.tick_after(ward.epoch - Duration::from_secs(1)), 0, "a deadline already past is due");
    }
}
