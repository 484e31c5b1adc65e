//! How the ranks of an NCCL run get rank 0's NCCL unique id (128 opaque bytes): rank 0 listens
//! on `MASTER_PORT` and hands the id to each other rank, which connects to
//! `MASTER_ADDR:MASTER_PORT`, says who it is, and reads the id back.
//!
//! Why our own few lines of TCP instead of an MPI broadcast or torch's store: the NCCL path must
//! need nothing but the launcher's environment (torchrun, srun, mpirun all work), and this
//! exchange is where a mis-started run would otherwise hang: here every wait has a deadline that
//! ends in an error naming what is missing, and rank 0 returns only when every other rank has the
//! id, so NCCL's own initialisation starts with all ranks present. Plain std, so CI tests it.
//!
//! The exchange: the rank sends `MAGIC`, its rank and the world size it was started with (u64
//! little-endian each); rank 0 answers `0` and the id, or `1`, a u32 length and a message (then
//! both fail). A connection that does not start with `MAGIC` (a port scanner, a stale client of
//! another program) is dropped and rank 0 keeps waiting.
use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The size of an `ncclUniqueId`.
pub const ID_BYTES: usize = 128;

/// How long either side waits for the other by default: ranks of a cluster job start minutes
/// apart at worst.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

const MAGIC: &[u8; 8] = b"HTNCCL01";

/// Rank 0's listening socket on `port` (all interfaces: `MASTER_ADDR` is how the others reach
/// this host, whatever name it has here).
pub fn listen(port: u16) -> Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).with_context(|| {
        format!("rank 0 cannot listen on MASTER_PORT={port}; choose a free port for MASTER_PORT")
    })
}

/// Rank 0: gives `id` to each of ranks `1..world_size` once, and returns when all have it; fails
/// naming the ranks that did not come within `timeout`, or a rank started with another world
/// size, or two processes claiming one rank.
pub fn serve_id(
    listener: &TcpListener,
    id: &[u8; ID_BYTES],
    world_size: usize,
    timeout: Duration,
) -> Result<()> {
    if world_size == 0 {
        bail!("rank 0: a run of 0 ranks");
    }
    let deadline = Instant::now() + timeout;
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut served = vec![false; world_size];
    served[0] = true;
    listener
        .set_nonblocking(true)
        .context("rank 0: setting up the rendezvous socket")?;
    while served.contains(&false) {
        let (mut stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let missing: Vec<usize> = (0..world_size).filter(|&r| !served[r]).collect();
                    bail!(
                        "rank 0: rank(s) {missing:?} of {world_size} did not ask for the NCCL id \
                         on port {port} within {} s; are they running, with MASTER_ADDR naming \
                         this host and MASTER_PORT={port}?",
                        timeout.as_secs_f64()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => return Err(e).context("rank 0: accepting a rank's connection"),
        };
        let Some((rank, their_world)) = read_hello(&mut stream, deadline) else {
            eprintln!("rank 0: ignoring a connection from {peer} that is not a rank of this run");
            continue;
        };
        let problem = if their_world != world_size as u64 {
            Some(format!(
                "rank {rank} (from {peer}) was started with a world size of {their_world}, rank 0 \
                 with {world_size}; start every rank with the same WORLD_SIZE"
            ))
        } else if rank == 0 || rank >= world_size as u64 {
            Some(format!(
                "a process at {peer} says it is rank {rank}, which is not a rank 1..{} that asks \
                 rank 0 for the NCCL id",
                world_size - 1
            ))
        } else if served[rank as usize] {
            Some(format!(
                "two processes say they are rank {rank} (the second from {peer}); give every \
                 process its own RANK"
            ))
        } else {
            None
        };
        match problem {
            None => {
                let mut reply = vec![0u8];
                reply.extend_from_slice(id);
                // A rank that cannot be answered will itself retry until its own deadline.
                if stream.write_all(&reply).is_ok() {
                    served[rank as usize] = true;
                }
            }
            Some(msg) => {
                let mut reply = vec![1u8];
                reply.extend_from_slice(&(msg.len() as u32).to_le_bytes());
                reply.extend_from_slice(msg.as_bytes());
                let _ = stream.write_all(&reply);
                bail!("rank 0: {msg}");
            }
        }
    }
    Ok(())
}

/// The rank's hello, or `None` for anything that is not one (before the deadline).
fn read_hello(stream: &mut TcpStream, deadline: Instant) -> Option<(u64, u64)> {
    stream.set_nonblocking(false).ok()?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(10));
    stream.set_read_timeout(Some(wait)).ok()?;
    stream.set_write_timeout(Some(wait)).ok()?;
    let mut hello = [0u8; 24];
    stream.read_exact(&mut hello).ok()?;
    if &hello[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(hello[i..i + 8].try_into().unwrap());
    Some((word(8), word(16)))
}

/// Rank `rank` of `world_size`: the NCCL id from rank 0 at `addr:port`, connecting again until
/// `timeout` while rank 0 is not yet listening; fails with what went wrong last.
pub fn fetch_id(
    addr: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    timeout: Duration,
) -> Result<[u8; ID_BYTES]> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("nothing tried");
    while Instant::now() < deadline {
        match try_fetch(addr, port, rank, world_size, deadline) {
            Ok(Ok(id)) => return Ok(id),
            // Rank 0 answered with a refusal: no point in asking again.
            Ok(Err(msg)) => bail!("rank {rank}: rank 0 refused: {msg}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "rank {rank}: no NCCL id from rank 0 at MASTER_ADDR={addr} MASTER_PORT={port} within {} s \
         (last: {last}); is rank 0 running, and do all ranks have the same MASTER_ADDR and \
         MASTER_PORT?",
        timeout.as_secs_f64()
    )
}

/// One attempt: `Err` to try again, `Ok(Err(message))` when rank 0 refused this rank.
fn try_fetch(
    addr: &str,
    port: u16,
    rank: usize,
    world_size: usize,
    deadline: Instant,
) -> Result<std::result::Result<[u8; ID_BYTES], String>> {
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    let target: SocketAddr = (addr, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} has no address"))?;
    let mut s = TcpStream::connect_timeout(&target, wait.min(Duration::from_secs(5)))
        .with_context(|| format!("connecting to {target}"))?;
    s.set_read_timeout(Some(wait))?;
    s.set_write_timeout(Some(wait))?;
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&(rank as u64).to_le_bytes());
    hello.extend_from_slice(&(world_size as u64).to_le_bytes());
    s.write_all(&hello).context("sending this rank's hello")?;
    let mut status = [0u8; 1];
    s.read_exact(&mut status)
        .context("reading rank 0's answer")?;
    if status[0] == 0 {
        let mut id = [0u8; ID_BYTES];
        s.read_exact(&mut id).context("reading the NCCL id")?;
        return Ok(Ok(id));
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).context("reading rank 0's refusal")?;
    let len = u32::from_le_bytes(len).min(1 << 16) as usize;
    let mut msg = vec![0u8; len];
    s.read_exact(&mut msg).context("reading rank 0's refusal")?;
    Ok(Err(String::from_utf8_lossy(&msg).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> [u8; ID_BYTES] {
        std::array::from_fn(|i| (i * 37 + 11) as u8)
    }

    /// A port that was free a moment ago (nothing listens on it now).
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn every_rank_receives_rank_0s_id() {
        let port = free_port();
        // The other ranks start before rank 0 listens: they must keep trying.
        let others: Vec<_> = (1..3)
            .map(|r| {
                std::thread::spawn(move || {
                    fetch_id("127.0.0.1", port, r, 3, Duration::from_secs(20))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        serve_id(&listener, &id(), 3, Duration::from_secs(20)).unwrap();
        for t in others {
            assert_eq!(t.join().unwrap().unwrap(), id());
        }
    }

    #[test]
    fn a_missing_rank_0_ends_in_an_error() {
        let port = free_port();
        let err = fetch_id("127.0.0.1", port, 1, 2, Duration::from_millis(500)).unwrap_err();
        let err = format!("{err:#}");
        assert!(
            err.contains("rank 1: no NCCL id from rank 0")
                && err.contains(&format!("MASTER_PORT={port}")),
            "{err}"
        );
    }

    #[test]
    fn a_missing_rank_is_named_by_rank_0() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let one =
            std::thread::spawn(move || fetch_id("127.0.0.1", port, 1, 3, Duration::from_secs(20)));
        let err = serve_id(&listener, &id(), 3, Duration::from_millis(1500)).unwrap_err();
        assert!(format!("{err:#}").contains("rank(s) [2] of 3"), "{err:#}");
        assert_eq!(one.join().unwrap().unwrap(), id());
    }

    #[test]
    fn strangers_are_ignored_and_other_world_sizes_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stranger = std::thread::spawn(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.write_all(b"GET / HTTP/1.0\r\n\r\n\0\0\0\0\0\0").unwrap();
        });
        stranger.join().unwrap();
        let wrong =
            std::thread::spawn(move || fetch_id("127.0.0.1", port, 1, 3, Duration::from_secs(20)));
        let err = format!(
            "{:#}",
            serve_id(&listener, &id(), 2, Duration::from_secs(20)).unwrap_err()
        );
        assert!(err.contains("world size of 3, rank 0 with 2"), "{err}");
        let err = format!("{:#}", wrong.join().unwrap().unwrap_err());
        assert!(
            err.contains("rank 1: rank 0 refused") && err.contains("WORLD_SIZE"),
            "{err}"
        );
    }
}
