//! [`Comm`] over NCCL (cudarc's bindings; feature `nccl`): one process per GPU, started by
//! torchrun, srun or mpirun ([`LaunchEnv`]), the NCCL id handed out by rank 0 over TCP
//! ([`rendezvous`](super::rendezvous)), the byte all-gather framed onto NCCL's equal-count one
//! ([`framing`](super::framing)) through buffers on this rank's GPU.
//!
//! The communicator has its own CUDA context handle and stream on the rank's GPU: each gather
//! copies the host bytes up, gathers, copies the result down and waits for it, so it never
//! touches candle's tensors or orders itself against candle's stream.
use super::framing::{all_gather_bytes, EqualAllGather};
use super::launch_env::LaunchEnv;
use super::rendezvous;
use super::Comm;
use anyhow::{anyhow, Context, Result};
use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaStream};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm as RawComm, Id};
use std::sync::{Arc, Mutex};

/// This process's rank of an NCCL run.
pub struct NcclComm {
    /// `None` once aborted.
    inner: Mutex<Option<Inner>>,
    rank: usize,
    size: usize,
    ordinal: usize,
    host: String,
}

/// The communicator and the stream its collectives run on.
struct Inner {
    comm: RawComm,
    stream: Arc<CudaStream>,
}

// SAFETY: an NCCL communicator may be used from any thread, one call at a time; `Inner` is
// only reached through `NcclComm`'s mutex.
unsafe impl Send for Inner {}

impl NcclComm {
    /// Joins the run `env` describes on GPU `ordinal` ([`LaunchEnv::cuda_ordinal`]): rank 0
    /// makes the NCCL id and hands it to every other rank (within
    /// [`rendezvous::DEFAULT_TIMEOUT`]), then all ranks create the communicator together.
    pub fn init(env: &LaunchEnv, ordinal: usize) -> Result<NcclComm> {
        let what = || format!("NCCL rank {} of {}", env.rank, env.world_size);
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| anyhow!("{}: opening cuda:{ordinal}: {e}", what()))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("{}: a CUDA stream on cuda:{ordinal}: {e}", what()))?;
        let id = if env.rank == 0 {
            // Listen before making the id, so that a busy port fails before NCCL starts.
            let listener = rendezvous::listen(env.master_port)?;
            let id = Id::new().map_err(|e| anyhow!("rank 0: ncclGetUniqueId: {:?}", e.0))?;
            let bytes: [u8; rendezvous::ID_BYTES] = id.internal().map(|c| c as u8);
            rendezvous::serve_id(
                &listener,
                &bytes,
                env.world_size,
                rendezvous::DEFAULT_TIMEOUT,
            )?;
            id
        } else {
            let bytes = rendezvous::fetch_id(
                &env.master_addr,
                env.master_port,
                env.rank,
                env.world_size,
                rendezvous::DEFAULT_TIMEOUT,
            )?;
            Id::uninit(bytes.map(|b| b as _))
        };
        let comm = RawComm::from_rank(stream.clone(), env.rank, env.world_size, id)
            .map_err(|e| anyhow!("{}: ncclCommInitRank: {:?}", what(), e.0))?;
        Ok(NcclComm {
            inner: Mutex::new(Some(Inner { comm, stream })),
            rank: env.rank,
            size: env.world_size,
            ordinal,
            host: hostname(),
        })
    }
}

impl EqualAllGather for Inner {
    fn size(&self) -> usize {
        self.comm.world_size()
    }

    fn all_gather_equal(&self, local: &[u8]) -> Result<Vec<u8>> {
        let n = local.len();
        let send = self
            .stream
            .clone_htod(local)
            .map_err(|e| anyhow!("copying {n} bytes to the GPU: {e}"))?;
        let mut recv = self
            .stream
            .alloc_zeros::<u8>(n * self.size())
            .map_err(|e| anyhow!("allocating {} bytes on the GPU: {e}", n * self.size()))?;
        self.comm
            .all_gather(&send, &mut recv)
            .map_err(|e| anyhow!("ncclAllGather of {n} bytes per rank: {:?}", e.0))?;
        // Same stream, so after the gather; into pageable memory, which CUDA completes before
        // returning, and the explicit wait says so.
        let all = self
            .stream
            .clone_dtoh(&recv)
            .map_err(|e| anyhow!("copying the gathered bytes back: {e}"))?;
        self.stream
            .synchronize()
            .map_err(|e| anyhow!("waiting for the all-gather: {e}"))?;
        Ok(all)
    }
}

impl Comm for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_gather(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        let inner = self
            .inner
            .lock()
            .map_err(|_| anyhow!("{}: communicator poisoned", self.describe()))?;
        let inner = inner
            .as_ref()
            .with_context(|| format!("{}: communicator aborted", self.describe()))?;
        all_gather_bytes(inner, local).with_context(|| self.describe())
    }

    /// Aborts the communicator (cudarc's drop calls `ncclCommAbort`), so that NCCL's peers see
    /// the connection end, then exits. If another thread is inside a collective (holding the
    /// lock), the exit alone tears the connections down.
    fn abort(&self, code: i32) -> ! {
        if let Ok(mut inner) = self.inner.try_lock() {
            if let Some(inner) = inner.take() {
                // cudarc's drop panics if the abort itself fails: the exit follows regardless.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(inner)));
            }
        }
        std::process::exit(code)
    }

    fn describe(&self) -> String {
        format!(
            "NCCL rank {} of {} on {} (cuda:{})",
            self.rank, self.size, self.host, self.ordinal
        )
    }
}

/// This machine's name, for messages.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
