//! One replica per core: a training step's batch split into `N` equal shares, each run forward
//! and backward on its own thread, the gradients summed in replica order.
//!
//! Why: at the widths this project trains (8–64 channels at 32 px) one step is hundreds of small
//! ops; splitting each op over the cores costs a hand-off per op (15–20 % of a step in the
//! profile) and still left one pretraining using about 1.1 of 2 cores. A replica instead runs all
//! of its share's ops on one thread, inside its own one-thread rayon pool, so the kernels'
//! `par_iter`s run inline with no hand-off: the replicas meet only twice per step (after the
//! key forward, to un-shuffle the keys, and after the backward, to sum the gradients).
//!
//! The same decomposition as MoCo's DistributedDataParallel code, with the replicas in one
//! process: each owns whole shuffle-BN groups, the key batch is shuffled across all replicas
//! and un-shuffled after, the queue is filled in replica order. Because gradients and batch
//! statistics are combined in a fixed order, a run is deterministic for a given `N` (and resumes
//! byte-identical); different `N` agree within float rounding (the sums are grouped differently).
//! `N = 1` runs on the calling thread with the ambient rayon pool: exactly the single-replica
//! step as it was before replicas existed.
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

/// The replicas of one trainer: `N` one-thread rayon pools (none for `N = 1`).
pub struct Replicas {
    n: usize,
    pools: Vec<rayon::ThreadPool>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Replicas({})", self.n)
    }
}

impl Replicas {
    /// `n` ≥ 1 replicas.
    pub fn new(n: usize) -> Result<Replicas> {
        if n == 0 {
            bail!("--replicas must be at least 1");
        }
        let pools = if n == 1 {
            Vec::new()
        } else {
            (0..n)
                .map(|r| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("replica-{r}"))
                        .build()
                        .context("starting a replica thread")
                })
                .collect::<Result<_>>()?
        };
        Ok(Replicas { n, pools })
    }

    /// The default `--replicas`: one per thread of the current rayon pool (the cores available
    /// to this run; a study job running beside another gets its share).
    pub fn default_count() -> usize {
        rayon::current_num_threads().max(1)
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `f(r)` for every replica `r`, all at once, each on its own thread with single-threaded
    /// kernels; the results in replica order. The first error (in replica order) is returned;
    /// a replica that panics is reported as an error naming it.
    pub fn run<T: Send>(&self, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
        if self.n == 1 {
            return Ok(vec![f(0)?]);
        }
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pools
                .iter()
                .enumerate()
                .map(|(r, pool)| s.spawn(move || pool.install(|| f(r))))
                .collect();
            let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            joined
                .into_iter()
                .enumerate()
                .map(|(r, j)| match j {
                    Ok(res) => res.with_context(|| format!("replica {r}")),
                    Err(_) => bail!("replica {r} panicked"),
                })
                .collect()
        })
    }

    /// The rows `[r·B/N, (r+1)·B/N)` of `x` (dim 0), replica `r`'s share of the batch.
    pub fn share(&self, x: &Tensor, r: usize) -> Result<Tensor> {
        if self.n == 1 {
            return Ok(x.clone());
        }
        let b = x.dim(0)?;
        let per = b / self.n;
        Ok(x.narrow(0, r * per, per)?)
    }

    /// Checks that a batch of `batch` with `groups` BN groups splits into whole groups per
    /// replica, with a message that says what to change.
    pub fn check_split(&self, batch: usize, groups: usize) -> Result<()> {
        if self.n == 1 {
            return Ok(());
        }
        if !groups.is_multiple_of(self.n) || !batch.is_multiple_of(groups) {
            bail!(
                "--replicas {}: each replica must hold whole BN groups, but batch {batch} with \
                 {groups} BN groups does not split into {} replicas; use a --bn-groups that is a \
                 multiple of {} (and divides --batch-size), or --replicas 1",
                self.n,
                self.n,
                self.n
            );
        }
        Ok(())
    }
}

/// The replicas' gradients summed in replica order into the first store, for every parameter
/// in `params` (a parameter with no gradient in any replica stays without one).
pub fn sum_grads(mut stores: Vec<GradStore>, params: &[(String, Var)]) -> Result<GradStore> {
    if stores.is_empty() {
        bail!("internal: no replica gradients to sum");
    }
    let rest = stores.split_off(1);
    let mut sum = stores.pop().expect("one store");
    if rest.is_empty() {
        return Ok(sum);
    }
    for (_, var) in params {
        let t = var.as_tensor();
        let mut acc = sum.remove(t);
        for g in rest.iter().filter_map(|s| s.get(t)) {
            acc = Some(match acc {
                Some(a) => (a + g)?,
                None => g.clone(),
            });
        }
        if let Some(a) = acc {
            sum.insert(t, a);
        }
    }
    Ok(sum)
}
