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
//!
//! Across processes (`--distributed mpi`): the `N` replicas are spread over the processes of a
//! [`Comm`], `N / size` each, global replica `r` on rank `r / (N / size)`. Every process loads the
//! whole batch (the key shuffle crosses replicas), runs its own replicas, and at the two meeting
//! points receives every other replica's share ([`Replicas::gather`]), then combines them in
//! replica order exactly as one process does: the same `N` gives byte-identical weights in one
//! process or in many. Each replica runs in a one-thread pool whenever `N > 1`, in either case,
//! so that its kernels compute the same bytes (on the CPU; with one GPU per process,
//! `--distributed nccl`, each process's one replica runs on its calling thread).
use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use std::collections::BTreeMap;
use std::sync::Arc;

use super::comm::{all_gather_tensors, Comm};
use crate::model::ops::BatchStats;

/// The replicas of one trainer: `N` in all, of which this process runs `local`, each in a
/// one-thread rayon pool (none for `N = 1`).
pub struct Replicas {
    local: usize,
    pools: Vec<rayon::ThreadPool>,
    comm: Option<Arc<dyn Comm>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.comm {
            None => write!(f, "Replicas({})", self.local),
            Some(c) => write!(
                f,
                "Replicas({} of {}, {})",
                self.local,
                self.len(),
                c.describe()
            ),
        }
    }
}

impl Replicas {
    /// `n` ≥ 1 replicas in this process.
    pub fn new(n: usize) -> Result<Replicas> {
        Replicas::build(n, None, true)
    }

    /// `total` replicas spread evenly over the processes of `comm`. On a GPU (`on_cpu` false),
    /// a process's one replica runs on the calling thread: the one-thread pools are there for
    /// the CPU kernels' bytes, and candle's CUDA ops go to a stream of the issuing thread, which
    /// must stay the thread that made the step's other tensors.
    pub fn distributed(total: usize, comm: Arc<dyn Comm>, on_cpu: bool) -> Result<Replicas> {
        let size = comm.size();
        if total == 0 || !total.is_multiple_of(size) {
            bail!(
                "the run has {total} replicas, which {size} processes cannot share evenly; start \
                 a number of ranks that divides {total}"
            );
        }
        Replicas::build(total / size, Some(comm), on_cpu)
    }

    fn build(local: usize, comm: Option<Arc<dyn Comm>>, on_cpu: bool) -> Result<Replicas> {
        if local == 0 {
            bail!("--replicas must be at least 1");
        }
        let total = local * comm.as_ref().map_or(1, |c| c.size());
        let first = comm.as_ref().map_or(0, |c| c.rank() * local);
        let pools = if total == 1 || (local == 1 && !on_cpu) {
            Vec::new()
        } else {
            (first..first + local)
                .map(|r| {
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .thread_name(move |_| format!("replica-{r}"))
                        .build()
                        .context("starting a replica thread")
                })
                .collect::<Result<_>>()?
        };
        Ok(Replicas { local, pools, comm })
    }

    /// The default `--replicas`: one per thread of the current rayon pool (the cores available
    /// to this run; a study job running beside another gets its share).
    pub fn default_count() -> usize {
        rayon::current_num_threads().max(1)
    }

    /// `N`, the replicas of the whole run (all processes).
    pub fn len(&self) -> usize {
        self.local * self.comm.as_ref().map_or(1, |c| c.size())
    }

    /// The replicas this process runs.
    pub fn local(&self) -> usize {
        self.local
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The processes the replicas are spread over (`None`: all in this one).
    pub fn comm(&self) -> Option<&dyn Comm> {
        self.comm.as_deref()
    }

    /// Whether this process writes the run's files (rank 0, or the only process).
    pub fn is_root(&self) -> bool {
        self.comm.as_ref().is_none_or(|c| c.rank() == 0)
    }

    /// The global index of this process's first replica.
    fn first(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank() * self.local)
    }

    /// `f(r)` for every replica `r` of this process (global indices), all at once, each on its
    /// own thread with single-threaded kernels; the results in replica order. The first error
    /// (in replica order) is returned; a replica that panics is reported as an error naming it.
    pub fn run<T: Send>(&self, f: impl Fn(usize) -> Result<T> + Sync) -> Result<Vec<T>> {
        if self.pools.is_empty() {
            return Ok(vec![f(self.first())?]);
        }
        let (f, first) = (&f, self.first());
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .pools
                .iter()
                .enumerate()
                .map(|(i, pool)| s.spawn(move || pool.install(|| f(first + i))))
                .collect();
            let joined: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            joined
                .into_iter()
                .enumerate()
                .map(|(i, j)| match j {
                    Ok(res) => res.with_context(|| format!("replica {}", first + i)),
                    Err(_) => bail!("replica {} panicked", first + i),
                })
                .collect()
        })
    }

    /// The rows `[r·B/N, (r+1)·B/N)` of `x` (dim 0), replica `r`'s share of the batch.
    pub fn share(&self, x: &Tensor, r: usize) -> Result<Tensor> {
        let n = self.len();
        if n == 1 {
            return Ok(x.clone());
        }
        let per = x.dim(0)? / n;
        Ok(x.narrow(0, r * per, per)?)
    }

    /// Every replica's named tensors, in replica order: `local[i]` are this process's replica
    /// `first + i`'s; the others' arrive from their processes (in one process, `local` itself).
    pub fn gather(
        &self,
        local: Vec<Vec<(String, Tensor)>>,
        device: &Device,
    ) -> Result<Vec<BTreeMap<String, Tensor>>> {
        let Some(comm) = &self.comm else {
            return Ok(local.into_iter().map(|v| v.into_iter().collect()).collect());
        };
        let first = self.first();
        let named = local
            .into_iter()
            .enumerate()
            .flat_map(|(i, v)| {
                v.into_iter()
                    .map(move |(name, t)| (format!("{}/{name}", first + i), t))
            })
            .collect();
        let mut out = vec![BTreeMap::new(); self.len()];
        for (key, t) in all_gather_tensors(comm.as_ref(), named, device)? {
            let (r, name) = key
                .split_once('/')
                .and_then(|(r, n)| Some((r.parse::<usize>().ok()?, n)))
                .with_context(|| format!("internal: gathered tensor {key}"))?;
            out.get_mut(r)
                .with_context(|| format!("internal: gathered tensor {key}: no replica {r}"))?
                .insert(name.to_string(), t);
        }
        Ok(out)
    }

    /// The batch statistics each replica's BN forwards held ([`crate::model::ResNet`]'s
    /// `take_replica_bn_stats`), completed with the other processes' replicas.
    pub fn gather_bn_stats(
        &self,
        held: BTreeMap<(usize, String), BatchStats>,
        device: &Device,
    ) -> Result<BTreeMap<(usize, String), BatchStats>> {
        if self.comm.is_none() {
            return Ok(held);
        }
        let first = self.first();
        let mut local = vec![Vec::new(); self.local];
        for ((r, bn), s) in held {
            let slot = r
                .checked_sub(first)
                .and_then(|i| local.get_mut(i))
                .with_context(|| format!("internal: replica {r} is not this process's"))?;
            slot.push((format!("{bn}/mean"), s.mean));
            slot.push((format!("{bn}/var"), s.var_unbiased));
        }
        let mut out = BTreeMap::new();
        for (r, named) in self.gather(local, device)?.into_iter().enumerate() {
            let mut named = named;
            let bns: Vec<String> = named
                .keys()
                .filter_map(|k| k.strip_suffix("/mean").map(str::to_string))
                .collect();
            for bn in bns {
                let mean = named.remove(&format!("{bn}/mean"));
                let var = named.remove(&format!("{bn}/var"));
                let (Some(mean), Some(var_unbiased)) = (mean, var) else {
                    bail!("internal: replica {r} sent incomplete statistics for {bn}");
                };
                out.insert((r, bn), BatchStats { mean, var_unbiased });
            }
        }
        Ok(out)
    }

    /// Checks that a batch of `batch` with `groups` BN groups splits into whole groups per
    /// replica, with a message that says what to change.
    pub fn check_split(&self, batch: usize, groups: usize) -> Result<()> {
        let n = self.len();
        if n == 1 {
            return Ok(());
        }
        if !groups.is_multiple_of(n) || !batch.is_multiple_of(groups) {
            let replicas = match &self.comm {
                None => format!("--replicas {n}"),
                Some(c) => format!(
                    "{n} replicas ({} ranks x --replicas {})",
                    c.size(),
                    self.local
                ),
            };
            bail!(
                "{replicas}: each replica must hold whole BN groups, but batch {batch} with \
                 {groups} BN groups does not split into {n} replicas; use a --bn-groups that is a \
                 multiple of {n} (and divides --batch-size), or fewer replicas"
            );
        }
        Ok(())
    }
}

/// The replicas' gradients (each replica's in `params` order, `None` where it has none) summed
/// in replica order into `base` (a store of this process's, whose entries are replaced), for
/// every parameter in `params` (a parameter with no gradient in any replica stays without one).
pub fn sum_grads(
    mut base: GradStore,
    per_replica: &[Vec<Option<Tensor>>],
    params: &[(String, Var)],
) -> Result<GradStore> {
    for (i, (name, var)) in params.iter().enumerate() {
        let mut acc: Option<Tensor> = None;
        for (r, grads) in per_replica.iter().enumerate() {
            let g = grads
                .get(i)
                .with_context(|| format!("internal: replica {r} has no slot for {name}"))?;
            if let Some(g) = g {
                acc = Some(match acc {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
        }
        let t = var.as_tensor();
        base.remove(t);
        if let Some(a) = acc {
            base.insert(t, a);
        }
    }
    Ok(base)
}
