//! A team of spinning helper threads for splitting one inference's convolutions (`threads`
//! feature).
//!
//! Why not rayon: a conv of ResNet-8 takes 10–40 µs on one AVX-512 core, and waking a sleeping
//! worker costs about as much (measured on the 2-vCPU development VM: with rayon's global pool
//! every second half of every split conv ran on the calling worker, the other one never woke in
//! time, and two threads were slower than one). So the helpers here *spin* for as long as an
//! inference holds the team ([`engage`] … drop of [`Engaged`]), as onnxruntime's pool does, and
//! park in between.
//!
//! Protocol (one owner at a time, the [`Engaged`] guard): the owner publishes a job (a task
//! function and a task count) under a new epoch, then claims tasks itself; every claim is a CAS
//! on `epoch << 16 | next index`, so a helper holding a stale job can never claim a task of a
//! newer one. The owner returns when every task has reported done, so the task closure, which
//! lives on the owner's stack, outlives every call to it.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
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

struct Shared {
    job: Mutex<Job>,
    /// The newest job's epoch (what the helpers watch).
    epoch: AtomicU64,
    /// `epoch << 16 | next task index`.
    claim: AtomicU64,
    /// Tasks of the current job finished.
    done: AtomicUsize,
    /// A task panicked (the kernels do not panic; this turns a would-be hang into a panic).
    poisoned: AtomicBool,
    /// An inference holds the team: helpers spin instead of parking.
    active: AtomicBool,
}

/// The process-wide team: one helper per CPU beyond the first.
pub(crate) struct Team {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    owner: Mutex<()>,
}

static TEAM: OnceLock<Team> = OnceLock::new();

impl Team {
    fn new() -> Team {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            job: Mutex::new(Job {
                epoch: 0,
                task: None,
                n: 0,
            }),
            epoch: AtomicU64::new(0),
            claim: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
            active: AtomicBool::new(false),
        });
        let helpers = (1..cpus.min(MAX_TASKS))
            .filter_map(|i| {
                let sh = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(alloc::format!("runtime-core-{i}"))
                    .spawn(move || helper(&sh))
                    .ok()
                    .map(|h| h.thread().clone())
            })
            .collect();
        Team {
            shared,
            helpers,
            owner: Mutex::new(()),
        }
    }
}

/// The team held by one inference; dropping it lets the helpers park.
pub struct Engaged {
    team: &'static Team,
    _owner: MutexGuard<'static, ()>,
}

/// Takes the team for one inference if `threads > 1`, the machine has more than one CPU and no
/// other thread holds it (then `None`: the caller runs on its own thread).
pub(crate) fn engage(threads: usize) -> Option<Engaged> {
    if threads < 2 {
        return None;
    }
    let team = TEAM.get_or_init(Team::new);
    if team.helpers.is_empty() {
        return None;
    }
    let owner = team.owner.try_lock().ok()?;
    team.shared.active.store(true, Ordering::Release);
    for h in &team.helpers {
        h.unpark();
    }
    Some(Engaged {
        team,
        _owner: owner,
    })
}

impl Drop for Engaged {
    fn drop(&mut self) {
        self.team.shared.active.store(false, Ordering::Release);
    }
}

impl Engaged {
    /// Threads that can take tasks: the owner and the helpers.
    pub(crate) fn size(&self) -> usize {
        self.team.helpers.len() + 1
    }

    /// Runs `task(i)` for every `i < n`, on this thread and the helpers, and returns when all
    /// have finished.
    pub(crate) fn run(&self, n: usize, task: &(dyn Fn(usize) + Sync)) {
        if n > MAX_TASKS {
            (0..n).for_each(task);
            return;
        }
        let sh = &*self.team.shared;
        // SAFETY: only the lifetime is erased; this function does not return before every
        // claimed call has finished (`done == n`), and no call can be claimed after that.
        let ptr = TaskPtr(unsafe {
            core::mem::transmute::<
                *const (dyn Fn(usize) + Sync + '_),
                *const (dyn Fn(usize) + Sync + 'static),
            >(task)
        });
        let epoch = {
            let mut job = sh.job.lock().unwrap_or_else(|e| e.into_inner());
            job.epoch += 1;
            job.task = Some(ptr);
            job.n = n;
            sh.done.store(0, Ordering::Relaxed);
            sh.claim.store(job.epoch << 16, Ordering::Release);
            job.epoch
        };
        sh.epoch.store(epoch, Ordering::Release);
        work(sh, epoch, ptr, n);
        while sh.done.load(Ordering::Acquire) < n {
            core::hint::spin_loop();
        }
        if sh.poisoned.load(Ordering::Acquire) {
            panic!("a runtime-core helper thread's task panicked");
        }
    }
}

/// Claims and runs tasks of job `epoch` until none is left.
fn work(sh: &Shared, epoch: u64, task: TaskPtr, n: usize) {
    loop {
        let v = sh.claim.load(Ordering::Acquire);
        let i = (v & 0xffff) as usize;
        if v >> 16 != epoch || i >= n {
            return;
        }
        if sh
            .claim
            .compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // SAFETY: claimed under `epoch`, so the owner of this job is still waiting for it.
            let f = unsafe { &*task.0 };
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(i))).is_ok();
            if !ok {
                sh.poisoned.store(true, Ordering::Release);
            }
            sh.done.fetch_add(1, Ordering::Release);
        }
    }
}

/// Spins a helper keeps up after an inference lets the team go, before it parks: back-to-back
/// inferences (a benchmark, an evaluation loop) then find it awake (tens of µs).
const SPIN_DOWN: u32 = 1 << 15;

/// A helper's life: run every new job's tasks; spin while an inference holds the team and for
/// [`SPIN_DOWN`] turns after, park otherwise (`engage` unparks).
fn helper(sh: &Shared) {
    let mut seen = 0u64;
    let mut idle = 0u32;
    loop {
        let e = sh.epoch.load(Ordering::Acquire);
        if e != seen {
            seen = e;
            let job = *sh.job.lock().unwrap_or_else(|e| e.into_inner());
            if let (true, Some(task)) = (job.epoch == e, job.task) {
                work(sh, e, task, job.n);
            }
            idle = 0;
            continue;
        }
        if sh.active.load(Ordering::Acquire) {
            idle = 0;
            core::hint::spin_loop();
        } else if idle < SPIN_DOWN {
            idle += 1;
            core::hint::spin_loop();
        } else {
            idle = 0;
            std::thread::park();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::engage;
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

    /// While one thread holds the team, another gets `None` (and runs alone).
    #[test]
    fn one_owner_at_a_time() {
        if engage(2).is_none() && std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return; // one CPU: there are no helpers
        }
        // The other test may hold the team: wait for it.
        let team = loop {
            if let Some(t) = engage(2) {
                break t;
            }
            std::thread::yield_now();
        };
        std::thread::scope(|s| {
            s.spawn(|| assert!(engage(2).is_none())).join().unwrap();
        });
        drop(team);
        assert!(engage(1).is_none(), "one thread needs no team");
    }
}
