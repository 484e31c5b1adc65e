//! How the replicas of one run reach each other across processes: one small trait, [`Comm`],
//! with an MPI implementation ([`mpi::MpiComm`], feature `mpi`) and an NCCL one for one process
//! per GPU (`nccl::NcclComm`, feature `nccl`). The NCCL path's parts that need no GPU are plain
//! modules tested in CI: [`launch_env`] (rank, world size and GPU from the launcher's variables),
//! [`rendezvous`] (rank 0's NCCL id to the others over TCP) and [`framing`] (any-length messages
//! over an equal-count all-gather).
//!
//! Why a byte all-gather is the only collective: the replicas must combine their shares in a
//! fixed order so that a run with `N` replicas is the same computation wherever they run (one
//! process with `--replicas N`, or `N` MPI ranks): every process receives every replica's share
//! and adds them up in replica order itself, exactly as the in-process path does. An
//! all-reduce would sum in an order the library chooses, which is neither fixed nor the
//! in-process one. The models this project trains have at most a few million parameters, so
//! sending every share to every process costs little next to a step.
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;

pub mod framing;
pub mod launch_env;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;

/// The processes of one distributed run. Every call is collective: each process calls it in the
/// same order, and a call returns on all of them or fails on all of them.
pub trait Comm: Send + Sync {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;
    /// How many processes take part.
    fn size(&self) -> usize;
    /// Every process's `local` bytes, in rank order (the same on every process).
    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Ends every process of the run with `code`, after this one has printed why: a process that
    /// failed alone would leave the others waiting in their next collective.
    fn abort(&self, code: i32) -> !;
    /// For messages, e.g. `MPI rank 1 of 2 on host-a`.
    fn describe(&self) -> String;
}

/// Named tensors (any dtype) as one byte string, and back: what a process sends in
/// [`Comm::all_gather`]. safetensors keeps dtypes and shapes exact, so the receiver adds exactly
/// the values the sender computed.
pub fn encode_tensors(tensors: Vec<(String, Tensor)>) -> Result<Vec<u8>> {
    Ok(safetensors::serialize(tensors, None)?)
}

/// [`encode_tensors`]'s inverse; `from_rank` names the sender in errors.
pub fn decode_tensors(
    bytes: &[u8],
    device: &Device,
    from_rank: usize,
) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load_buffer(bytes, device)
        .with_context(|| format!("decoding the tensors rank {from_rank} sent"))?;
    Ok(map.into_iter().collect())
}

/// Every process's named tensors, gathered and merged into one map (names must not repeat
/// across processes: callers prefix them with the global replica index).
pub fn all_gather_tensors(
    comm: &dyn Comm,
    local: Vec<(String, Tensor)>,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let blobs = comm.all_gather(&encode_tensors(local)?)?;
    let mut all = BTreeMap::new();
    for (rank, blob) in blobs.iter().enumerate() {
        for (name, t) in decode_tensors(blob, device, rank)? {
            if all.insert(name.clone(), t).is_some() {
                bail!("internal: tensor {name} sent by two ranks");
            }
        }
    }
    Ok(all)
}

/// Checks that every process runs the same thing: each sends a fingerprint (the run's settings
/// and data); a rank whose fingerprint differs from rank 0's is named with the first difference.
pub fn check_same_run(comm: &dyn Comm, fingerprint: &str) -> Result<()> {
    let all = comm.all_gather(fingerprint.as_bytes())?;
    let root = String::from_utf8_lossy(&all[0]).into_owned();
    for (rank, f) in all.iter().enumerate().skip(1) {
        let f = String::from_utf8_lossy(f);
        if f != root {
            let (a, b) = first_difference(&root, &f);
            bail!(
                "rank {rank} was started with other settings or data than rank 0: rank 0 has \
                 `{a}`, rank {rank} has `{b}`; start every rank with the same command and data"
            );
        }
    }
    Ok(())
}

/// The first differing line of two fingerprints (one setting per line).
fn first_difference<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    let mut la = a.lines();
    let mut lb = b.lines();
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => continue,
            (x, y) => return (x.unwrap_or("(nothing)"), y.unwrap_or("(nothing)")),
        }
    }
}

#[cfg(feature = "mpi")]
pub mod mpi {
    //! [`Comm`] over MPI (the `mpi` crate on the system's MPI library, e.g. Debian's OpenMPI).
    use super::Comm;
    use anyhow::{bail, Result};
    use mpi::datatype::PartitionMut;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Threading;
    use std::sync::Mutex;

    /// `MPI_COMM_WORLD` of this process. MPI is initialised with `MPI_THREAD_FUNNELED`: every
    /// collective is called by the thread that initialised it (the training loop's thread; the
    /// replicas' threads never call it), and the mutex keeps calls one at a time regardless.
    pub struct MpiComm {
        world: Mutex<SimpleCommunicator>,
        rank: usize,
        size: usize,
        host: String,
        // Finalises MPI when dropped; declared last so the communicator goes first.
        _universe: mpi::environment::Universe,
    }

    // SAFETY: the communicator handle is only used under the mutex, from the thread that
    // initialised MPI (FUNNELED); MPI handles are plain values that may move between threads.
    unsafe impl Send for MpiComm {}
    unsafe impl Sync for MpiComm {}

    impl MpiComm {
        /// Initialises MPI (once per process) and joins `MPI_COMM_WORLD`.
        pub fn init() -> Result<MpiComm> {
            let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Funneled)
            else {
                bail!("MPI is already initialised in this process");
            };
            if threading < Threading::Funneled {
                bail!("the MPI library offers no MPI_THREAD_FUNNELED support ({threading:?})");
            }
            let world = universe.world();
            let (rank, size) = (world.rank() as usize, world.size() as usize);
            let host = mpi::environment::processor_name().unwrap_or_else(|_| "?".into());
            Ok(MpiComm {
                world: Mutex::new(world),
                rank,
                size,
                host,
                _universe: universe,
            })
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
            let world = self
                .world
                .lock()
                .map_err(|_| anyhow::anyhow!("MPI communicator poisoned"))?;
            let n = i32::try_from(local.len())
                .map_err(|_| anyhow::anyhow!("{} bytes exceed one MPI message", local.len()))?;
            let mut counts = vec![0i32; self.size];
            world.all_gather_into(&n, &mut counts[..]);
            let mut displs = Vec::with_capacity(self.size);
            let mut total = 0i64;
            for &c in &counts {
                displs.push(i32::try_from(total).map_err(|_| anyhow::anyhow!("gather too large"))?);
                total += c as i64;
            }
            let mut buf = vec![0u8; total as usize];
            {
                let mut part = PartitionMut::new(&mut buf[..], &counts[..], &displs[..]);
                world.all_gather_varcount_into(local, &mut part);
            }
            Ok(counts
                .iter()
                .zip(&displs)
                .map(|(&c, &d)| buf[d as usize..(d + c) as usize].to_vec())
                .collect())
        }

        fn abort(&self, code: i32) -> ! {
            match self.world.lock() {
                Ok(w) => w.abort(code),
                Err(e) => e.into_inner().abort(code),
            }
        }

        fn describe(&self) -> String {
            format!("MPI rank {} of {} on {}", self.rank, self.size, self.host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A [`Comm`] of one process: what the library's single-process path amounts to.
    struct Solo;

    impl Comm for Solo {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            1
        }
        fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
            Ok(vec![local.to_vec()])
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
        fn describe(&self) -> String {
            "solo".into()
        }
    }

    #[test]
    fn tensors_cross_a_process_boundary_exactly() {
        let d = Device::Cpu;
        let a = Tensor::new(&[1.5f32, -2.25, 1e-30], &d).unwrap();
        let b = Tensor::new(0.1f64, &d).unwrap();
        let got = all_gather_tensors(
            &Solo,
            vec![("0/a".into(), a.clone()), ("0/b".into(), b)],
            &d,
        )
        .unwrap();
        assert_eq!(
            got["0/a"].to_vec1::<f32>().unwrap(),
            a.to_vec1::<f32>().unwrap()
        );
        assert_eq!(got["0/b"].to_scalar::<f64>().unwrap(), 0.1);
    }

    #[test]
    fn first_difference_names_the_setting() {
        assert_eq!(
            first_difference("lr=0.1\nseed=1\n", "lr=0.1\nseed=2\n"),
            ("seed=1", "seed=2")
        );
        assert_eq!(first_difference("a\n", "a\nb\n"), ("(nothing)", "b"));
    }
}
