//! A team of spinning helper threads for splitting inferences' convolutions (`threads`
//! feature).
//!
//! Why not rayon: a conv of ResNet-8 takes 10–40 µs on one AVX-512 core, and waking a sleeping
//! worker costs about as much (measured on the 2-vCPU development VM: with rayon's global pool
//! every second half of every split conv ran on the calling worker, the other one never woke in
//! time, and two threads were slower than one). So the helpers here *spin* for as long as an
//! inference holds them ([`engage`] … drop of [`Engaged`]), as onnxruntime's pool does, and
//! park in between.
//!
//! Sharing: the process has one helper per CPU beyond the first. An inference takes up to
//! `threads − 1` of those that are free, so several inference threads at once each get helpers
//! while there are CPUs for them, and one that finds none free runs alone (on a machine whose
//! CPUs are all busy, a helper would only take turns with it). Each engaged inference has its
//! own job board, so its helpers never wait on another's.
//!
//! Protocol (one owner per board, the [`Engaged`] guard): the owner publishes a job (a task
//! function and a task count) under a new epoch, then claims tasks itself; every claim is a CAS
//! on `epoch << 16 | next index`, so a helper holding a stale job can never claim a task of a
//! newer one. The owner returns when every task has reported done, so the task closure, which
//! lives on the owner's stack, outlives every call to it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;

/// Most tasks one job can have (the claim word's low 16 bits).
const MAX_TASKS: usize = 0xffff;

/// A borrowed task closure with its lifetime erased (see the module docs for why the owner's
/// stack outlives every call).
#[derive(Clone, Copy)]
struct TaskPtr(*const (dyn Fn(usize) + Sync + 'static));
// SAFETY: the pointee is `Sync`, and it is only called while the owner waits for it.
unsafe impl Send for TaskPtr {}

#[derive(Clone, Copy)]
struct Job {
    epoch: u64,
    task: Option<TaskPtr>,
    n: usize,
}

/// One engaged inference's jobs. Aligned apart so that two owners' counters never share a
/// cache line.
#[repr(align(128))]
struct Board {
    /// An inference owns this board.
    taken: AtomicBool,
    job: Mutex<Job>,
    /// The newest job's epoch (what the board's helpers watch); epochs only grow.
    epoch: AtomicU64,
    /// `epoch << 16 | next task index`.
    claim: AtomicU64,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// A task panicked (the kernels do not panic; this turns a would-be hang into a panic).
    poisoned: AtomicBool,
}

/// A helper's assignment.
#[repr(align(128))]
struct Slot {
    /// An inference holds this helper.
    busy: AtomicBool,
    /// `1 +` the index of the board it serves; 0 while free.
    board: AtomicUsize,
}

struct Shared {
    /// One per helper: every owner has at least one helper, so there are never more owners.
    boards: Vec<Board>,
    /// One per helper, in helper order.
    slots: Vec<Slot>,
}

/// The helpers and the boards they serve.
pub(crate) struct Team {
    shared: Arc<Shared>,
    /// By slot; `None` where the system refused the thread (its slot stays busy).
    helpers: Vec<Option<Thread>>,
}

static TEAM: OnceLock<Team> = OnceLock::new();

impl Team {
    /// `helpers` spinning helper threads (fewer if the system refuses to start some).
    fn new(helpers: usize) -> Team {
        let n = helpers.min(MAX_TASKS);
        let shared = Arc::new(Shared {
            boards: (0..n)
                .map(|_| Board {
                    taken: AtomicBool::new(false),
                    job: Mutex::new(Job {
                        epoch: 0,
                        task: None,
                        n: 0,
                    }),
                    epoch: AtomicU64::new(0),
                    claim: AtomicU64::new(0),
                    done: AtomicUsize::new(0),
                    poisoned: AtomicBool::new(false),
                })
                .collect(),
            slots: (0..n)
                .map(|_| Slot {
                    // Held until its thread exists: a helper that failed to start is never
                    // handed out.
                    busy: AtomicBool::new(true),
                    board: AtomicUsize::new(0),
                })
                .collect(),
        });
        let helpers = (0..n)
            .map(|i| {
                let sh = Arc::clone(&shared);
                let t = std::thread::Builder::new()
                    .name(alloc::format!("runtime-core-{}", i + 1))
                    .spawn(move || helper(&sh, i))
                    .ok()?
                    .thread()
                    .clone();
                shared.slots[i].busy.store(false, Ordering::Release);
                Some(t)
            })
            .collect();
        Team { shared, helpers }
    }

    /// Takes up to `threads − 1` free helpers and a board for one inference (`None`: no helper
    /// is free, or `threads < 2`).
    fn engage(&'static self, threads: usize) -> Option<Engaged> {
        if threads < 2 {
            return None;
        }
        let sh = &*self.shared;
        let board = sh.boards.iter().position(|b| {
            b.taken
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
        })?;
        let mut helpers = 0;
        for (slot, thread) in sh.slots.iter().zip(&self.helpers) {
            if helpers == threads - 1 {
                break;
            }
            if slot
                .busy
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                slot.board.store(board + 1, Ordering::Release);
                if let Some(t) = thread {
                    t.unpark();
                }
                helpers += 1;
            }
        }
        if helpers == 0 {
            sh.boards[board].taken.store(false, Ordering::Release);
            return None;
        }
        Some(Engaged {
            team: self,
            board,
            helpers,
        })
    }
}

/// Helpers and a board held by one inference; dropping it frees them (the helpers spin a
/// little, then park).
pub struct Engaged {
    team: &'static Team,
    board: usize,
    helpers: usize,
}

/// Takes helpers for one inference if `threads > 1`, the machine has more than one CPU and
/// some helper is free (else `None`: the caller runs on its own thread).
pub(crate) fn engage(threads: usize) -> Option<Engaged> {
    if threads < 2 {
        return None;
    }
    // (Asked once: `available_parallelism` reads cgroup files, tens of µs.)
    TEAM.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Team::new(cpus - 1)
    })
    .engage(threads)
}

impl Drop for Engaged {
    fn drop(&mut self) {
        let sh = &*self.team.shared;
        for slot in &sh.slots {
            if slot.board.load(Ordering::Acquire) == self.board + 1 {
                slot.board.store(0, Ordering::Release);
                slot.busy.store(false, Ordering::Release);
            }
        }
        sh.boards[self.board].taken.store(false, Ordering::Release);
    }
}

impl Engaged {
    /// Threads that can take tasks: the owner and its helpers.
    pub(crate) fn size(&self) -> usize {
        self.helpers + 1
    }

    /// Runs `task(i)` for every `i < n`, on this thread and its helpers, and returns when all
    /// have finished.
    pub(crate) fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n > MAX_TASKS {
            (0..n).for_each(task);
            return;
        }
        let b = &self.team.shared.boards[self.board];
        // SAFETY: only the lifetime is erased; this function does not return before every
        // claimed call has finished (`done == n`), and no call can be claimed after that.
        let ptr = TaskPtr(unsafe {
            core::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(task)
        });
        let epoch = {
            let mut job = b.job.lock().unwrap_or_else(|e| e.into_inner());
            job.epoch += 1;
            job.task = Some(ptr);
            job.n = n;
            b.done.store(0, Ordering::Relaxed);
            // (A panic is reported by the job it happened in, not by the board's next owner.)
            b.poisoned.store(false, Ordering::Relaxed);
            b.claim.store(job.epoch << 16, Ordering::Release);
            job.epoch
        };
        b.epoch.store(epoch, Ordering::Release);
        work(b, epoch, ptr, n);
        while b.done.load(Ordering::Acquire) < n {
            core::hint::spin_loop();
        }
        if b.poisoned.load(Ordering::Acquire) {
            panic!("a runtime-core helper thread's task panicked");
        }
    }
}

/// Claims and runs tasks of job `epoch` until none is left.
fn work(b: &Board, epoch: u64, task: TaskPtr, n: usize) {
    loop {
        let v = b.claim.load(Ordering::Acquire);
        let i = (v & 0xffff) as usize;
        if v >> 16 != epoch || i >= n {
            return;
        }
        if b.claim
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: claimed under `epoch`, so the owner of this job is still waiting for it.
            let f = unsafe { &*task.0 };
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_ok();
            if !ok {
                b.poisoned.store(true, Ordering::Release);
            }
            b.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Spins a helper keeps up after an inference lets it go, before it parks: back-to-back
/// inferences (a benchmark, an evaluation loop) then find it awake (tens of µs).
const SPIN_DOWN: u32 = 1 << 15;

/// Helper `me`'s life: run every new job of the board it is assigned to; spin while assigned
/// and for [`SPIN_DOWN`] turns after, park otherwise (`engage` unparks).
fn helper(sh: &Shared, me: usize) {
    let slot = &sh.slots[me];
    // The board last served and the newest epoch seen on it (a board's epochs only grow, so a
    // helper that comes back to the same board skips nothing; on another board it starts from
    // 0 and at worst looks at a finished job, whose tasks are all claimed).
    let (mut current, mut seen) = (0usize, 0u64);
    let mut idle = 0u32;
    loop {
        let assigned = slot.board.load(Ordering::Acquire);
        if assigned == 0 {
            if idle < SPIN_DOWN {
                idle += 1;
                core::hint::spin_loop();
            } else {
                idle = 0;
                std::thread::park();
            }
            continue;
        }
        idle = 0;
        if assigned != current {
            (current, seen) = (assigned, 0);
        }
        let b = &sh.boards[assigned - 1];
        let e = b.epoch.load(Ordering::Acquire);
        if e == seen {
            core::hint::spin_loop();
            continue;
        }
        seen = e;
        let job = *b.job.lock().unwrap_or_else(|e| e.into_inner());
        if let (true, Some(task)) = (job.epoch == e, job.task) {
            work(b, e, task, job.n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{engage, Engaged, Team};
    use alloc::vec::Vec;
    use core::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Every task of every job runs exactly once, and with more than one CPU the helpers take
    /// some of them (jobs of 64 busy 30 µs tasks, re-engaging the team each time, until a helper
    /// has taken part; up to 10 s, so a loaded machine cannot make it flaky).
    #[test]
    fn tasks_run_once_and_helpers_take_part() {
        if engage(8).is_none() {
            return; // one CPU: there are no helpers
        }
        let main = std::thread::current().id();
        let on_helper = AtomicUsize::new(0);
        let start = Instant::now();
        let mut jobs = 0;
        while on_helper.load(Ordering::Relaxed) == 0 && start.elapsed() < Duration::from_secs(10) {
            // (`one_owner_at_a_time` may hold it for a moment.)
            let Some(team) = engage(8) else { continue };
            let counts: alloc::vec::Vec<AtomicUsize> =
                (0..64).map(|_| AtomicUsize::new(0)).collect();
            team.run(counts.len(), &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
                if std::thread::current().id() != main {
                    on_helper.fetch_add(1, Ordering::Relaxed);
                }
                let t = Instant::now();
                while t.elapsed() < Duration::from_micros(30) {}
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            jobs += 1;
        }
        assert!(
            on_helper.load(Ordering::Relaxed) > 0,
            "no task ran on a helper in {jobs} jobs"
        );
    }

    /// A private team of `helpers` (leaked: helpers live as long as the process, as the global
    /// team's do).
    fn team(helpers: usize) -> &'static Team {
        alloc::boxed::Box::leak(alloc::boxed::Box::new(Team::new(helpers)))
    }

    /// Runs `jobs` jobs of 16 tasks on `e` and checks each task ran exactly once; returns how
    /// many ran on another thread than this one.
    fn run_jobs(e: &Engaged, jobs: usize) -> usize {
        let me = std::thread::current().id();
        let elsewhere = AtomicUsize::new(0);
        for _ in 0..jobs {
            let counts: Vec<AtomicUsize> = (0..16).map(|_| AtomicUsize::new(0)).collect();
            e.run(counts.len(), &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
                if std::thread::current().id() != me {
                    elsewhere.fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
        elsewhere.into_inner()
    }

    /// Inferences share the helpers: each takes up to `threads − 1` free ones, the last comer
    /// finds none and runs alone, and a freed helper serves the next one.
    #[test]
    fn helpers_are_shared_among_owners() {
        let t = team(3);
        assert!(t.engage(1).is_none(), "one thread needs no helpers");
        let a = t.engage(2).unwrap();
        let b = t.engage(2).unwrap();
        let c = t.engage(8).unwrap();
        assert_eq!((a.size(), b.size(), c.size()), (2, 2, 2));
        assert!(t.engage(2).is_none(), "every helper is taken");
        drop(b);
        let d = t.engage(4).unwrap();
        assert_eq!(d.size(), 2);
        for e in [&a, &c, &d] {
            run_jobs(e, 20);
        }
    }

    /// A task that panics fails its own job (the owner panics, whichever thread ran it), and
    /// the board's next job runs normally.
    #[test]
    fn a_panicking_task_fails_its_job_only() {
        let t = team(1);
        let e = t.engage(2).unwrap();
        let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            e.run(8, &|i| assert_ne!(i, 3, "task 3 fails on purpose"))
        }));
        assert!(failed.is_err());
        run_jobs(&e, 5);
    }

    /// Two inference threads at once, each with its own helper, run every task of their jobs
    /// exactly once, including after a helper has moved from one board to the other.
    #[test]
    fn concurrent_owners_run_their_own_jobs() {
        let t = team(2);
        // Both helpers serve board 0 first, then one of them moves to board 1.
        let all = t.engage(3).unwrap();
        assert_eq!(all.size(), 3);
        run_jobs(&all, 10);
        drop(all);
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        let e = loop {
                            if let Some(e) = t.engage(2) {
                                break e;
                            }
                            std::thread::yield_now();
                        };
                        assert_eq!(e.size(), 2);
                        run_jobs(&e, 50)
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
        });
    }
}
