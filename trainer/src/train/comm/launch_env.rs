//! Where this process sits in a one-process-per-GPU run, read from the variables its launcher
//! sets: torchrun's `RANK` / `WORLD_SIZE` / `LOCAL_RANK`, Slurm's `SLURM_PROCID` / `SLURM_NTASKS`
//! / `SLURM_LOCALID`, OpenMPI's `OMPI_COMM_WORLD_RANK` / `_SIZE` / `_LOCAL_RANK`; and where rank 0
//! can be reached, `MASTER_ADDR` / `MASTER_PORT` (torchrun sets them; under Slurm or mpirun the
//! job script exports them).
//!
//! Why a module of its own, apart from NCCL: it is plain string parsing that decides which GPU a
//! process takes and whom it waits for, so it is tested in CI on machines with no GPU, every
//! message included. A wrong rank would only show as a hang on the cluster.
//!
//! Precedence, when several launchers' variables are present: torchrun's, then OpenMPI's, then
//! Slurm's, the innermost launcher first (torchrun or mpirun started inside a Slurm allocation
//! still sees the allocation's `SLURM_*`, which describe the job step, not this process).
use anyhow::{bail, Context, Result};

/// One launcher's names for rank, world size and local rank.
struct Family {
    launcher: &'static str,
    rank: &'static str,
    size: &'static str,
    local_rank: &'static str,
}

const FAMILIES: [Family; 3] = [
    Family {
        launcher: "torchrun",
        rank: "RANK",
        size: "WORLD_SIZE",
        local_rank: "LOCAL_RANK",
    },
    Family {
        launcher: "mpirun (OpenMPI)",
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        local_rank: "OMPI_COMM_WORLD_LOCAL_RANK",
    },
    Family {
        launcher: "Slurm",
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        local_rank: "SLURM_LOCALID",
    },
];

/// This process's place in the run, as its launcher said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchEnv {
    /// Which launcher's variables were read (for messages).
    pub launcher: &'static str,
    pub rank: usize,
    pub world_size: usize,
    /// The rank among the processes on this machine: the GPU it takes.
    pub local_rank: usize,
    /// `MASTER_ADDR`: the host rank 0 runs on.
    pub master_addr: String,
    /// `MASTER_PORT`: the TCP port rank 0 listens on to hand out the NCCL id.
    pub master_port: u16,
}

impl LaunchEnv {
    /// From this process's environment.
    pub fn from_env() -> Result<LaunchEnv> {
        LaunchEnv::parse(|k| std::env::var(k).ok())
    }

    /// From any lookup (`get(name)` is the variable's value, if set): what [`from_env`] reads.
    ///
    /// [`from_env`]: LaunchEnv::from_env
    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<LaunchEnv> {
        let Some(f) = FAMILIES.iter().find(|f| {
            [f.rank, f.size, f.local_rank]
                .iter()
                .any(|k| get(k).is_some())
        }) else {
            bail!(
                "--distributed nccl: no launcher variables found; start each process with RANK, \
                 WORLD_SIZE and LOCAL_RANK set (torchrun sets them), or under srun (SLURM_PROCID, \
                 SLURM_NTASKS, SLURM_LOCALID) or mpirun (OMPI_COMM_WORLD_RANK, ..._SIZE, \
                 ..._LOCAL_RANK)"
            );
        };
        let number = |name: &str| -> Result<usize> {
            let v = get(name).with_context(|| {
                format!(
                    "--distributed nccl: {name} is not set, but {} are ({}); set all three",
                    set_names(f, &get),
                    f.launcher
                )
            })?;
            v.trim().parse().map_err(|_| {
                anyhow::anyhow!("--distributed nccl: {name}={v:?} is not a whole number >= 0")
            })
        };
        let (rank, world_size, local_rank) =
            (number(f.rank)?, number(f.size)?, number(f.local_rank)?);
        if world_size == 0 {
            bail!(
                "--distributed nccl: {}=0; the run needs at least one process",
                f.size
            );
        }
        if rank >= world_size {
            bail!(
                "--distributed nccl: {}={rank} is not below {}={world_size} (ranks count from 0)",
                f.rank,
                f.size
            );
        }
        if local_rank >= world_size {
            bail!(
                "--distributed nccl: {}={local_rank} is not below {}={world_size}; a process's \
                 rank on its machine counts from 0 among the run's processes there",
                f.local_rank,
                f.size
            );
        }
        let master_addr = match get("MASTER_ADDR") {
            Some(a) if !a.trim().is_empty() => a.trim().to_string(),
            _ => bail!(
                "--distributed nccl: MASTER_ADDR is not set; export the host of rank 0 (e.g. \
                 MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))"
            ),
        };
        let port = get("MASTER_PORT").context(
            "--distributed nccl: MASTER_PORT is not set; export a free TCP port on rank 0's host \
             (e.g. MASTER_PORT=29500)",
        )?;
        let master_port = match port.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => bail!("--distributed nccl: MASTER_PORT={port:?} is not a TCP port (1-65535)"),
        };
        Ok(LaunchEnv {
            launcher: f.launcher,
            rank,
            world_size,
            local_rank,
            master_addr,
            master_port,
        })
    }

    /// The CUDA ordinal this process trains on: `LOCAL_RANK`, or 0 when the launcher left this
    /// process one visible GPU (`CUDA_VISIBLE_DEVICES` of one entry, as Slurm's
    /// `--gpus-per-task=1` does), in which case that GPU is `cuda:0` whatever the local rank.
    /// `device` is `--device` if given: it must name that GPU.
    pub fn cuda_ordinal(
        &self,
        cuda_visible_devices: Option<&str>,
        device: Option<&str>,
    ) -> Result<usize> {
        let visible: Option<Vec<&str>> = cuda_visible_devices.map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        });
        let ordinal = match &visible {
            Some(v) if v.len() == 1 => 0,
            Some(v) if self.local_rank >= v.len() => bail!(
                "--distributed nccl: local rank {} needs GPU {0}, but CUDA_VISIBLE_DEVICES={:?} \
                 shows {} GPUs; start at most that many processes per machine",
                self.local_rank,
                cuda_visible_devices.unwrap_or_default(),
                v.len()
            ),
            _ => self.local_rank,
        };
        match device {
            None => Ok(ordinal),
            Some(d) if d.trim() == format!("cuda:{ordinal}") => Ok(ordinal),
            Some(d) => bail!(
                "--device {d}: with --distributed nccl this process (rank {}, local rank {}) \
                 trains on cuda:{ordinal}; drop --device or pass --device cuda:{ordinal}",
                self.rank,
                self.local_rank
            ),
        }
    }
}

/// The chosen family's variables that are set, for the message about the one that is not.
fn set_names(f: &Family, get: &impl Fn(&str) -> Option<String>) -> String {
    let set: Vec<&str> = [f.rank, f.size, f.local_rank]
        .into_iter()
        .filter(|k| get(k).is_some())
        .collect();
    set.join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<LaunchEnv> {
        LaunchEnv::parse(|k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    const MASTER: [(&str, &str); 2] = [("MASTER_ADDR", "node-0"), ("MASTER_PORT", "29500")];

    fn with_master<'a>(vars: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
        vars.iter().chain(MASTER.iter()).copied().collect()
    }

    /// The variables set, then the launcher, rank, world size and local rank they give.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, usize, usize, usize);

    #[test]
    fn each_launcher_is_read() {
        let cases: [Case; 5] = [
            (
                &[("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")],
                "torchrun",
                3,
                4,
                1,
            ),
            (
                &[
                    ("SLURM_PROCID", "5"),
                    ("SLURM_NTASKS", "8"),
                    ("SLURM_LOCALID", "1"),
                ],
                "Slurm",
                5,
                8,
                1,
            ),
            (
                &[
                    ("OMPI_COMM_WORLD_RANK", "2"),
                    ("OMPI_COMM_WORLD_SIZE", "3"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
                ],
                "mpirun (OpenMPI)",
                2,
                3,
                0,
            ),
            // torchrun inside a Slurm allocation: torchrun's variables describe this process.
            (
                &[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "1"),
                    ("SLURM_LOCALID", "0"),
                    ("RANK", "1"),
                    ("WORLD_SIZE", "2"),
                    ("LOCAL_RANK", "1"),
                ],
                "torchrun",
                1,
                2,
                1,
            ),
            // mpirun inside a Slurm allocation: OpenMPI's.
            (
                &[
                    ("SLURM_PROCID", "0"),
                    ("SLURM_NTASKS", "1"),
                    ("SLURM_LOCALID", "0"),
                    ("OMPI_COMM_WORLD_RANK", "1"),
                    ("OMPI_COMM_WORLD_SIZE", "2"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
                ],
                "mpirun (OpenMPI)",
                1,
                2,
                1,
            ),
        ];
        for (vars, launcher, rank, world_size, local_rank) in cases {
            let e = parse(&with_master(vars)).unwrap();
            assert_eq!(
                e,
                LaunchEnv {
                    launcher,
                    rank,
                    world_size,
                    local_rank,
                    master_addr: "node-0".into(),
                    master_port: 29500
                },
                "{vars:?}"
            );
        }
    }

    #[test]
    fn bad_environments_name_the_variable() {
        let cases: [(&[(&str, &str)], &str); 11] = [
            (&[], "no launcher variables found"),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "2")],
                "LOCAL_RANK is not set, but RANK and WORLD_SIZE are (torchrun)",
            ),
            (
                &[("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")],
                "SLURM_NTASKS is not set, but SLURM_PROCID and SLURM_LOCALID are (Slurm)",
            ),
            (
                &[("RANK", "one"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "RANK=\"one\" is not a whole number >= 0",
            ),
            (
                &[("RANK", "-1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "RANK=\"-1\" is not a whole number >= 0",
            ),
            (
                &[("RANK", "2"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")],
                "RANK=2 is not below WORLD_SIZE=2",
            ),
            (
                &[("RANK", "0"), ("WORLD_SIZE", "0"), ("LOCAL_RANK", "0")],
                "WORLD_SIZE=0",
            ),
            (
                &[
                    ("OMPI_COMM_WORLD_RANK", "0"),
                    ("OMPI_COMM_WORLD_SIZE", "2"),
                    ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
                ],
                "OMPI_COMM_WORLD_LOCAL_RANK=2 is not below OMPI_COMM_WORLD_SIZE=2",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("LOCAL_RANK", "0"),
                    ("MASTER_PORT", "29500"),
                ],
                "MASTER_ADDR is not set",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("LOCAL_RANK", "0"),
                    ("MASTER_ADDR", "h"),
                ],
                "MASTER_PORT is not set",
            ),
            (
                &[
                    ("RANK", "0"),
                    ("WORLD_SIZE", "1"),
                    ("LOCAL_RANK", "0"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "70000"),
                ],
                "MASTER_PORT=\"70000\" is not a TCP port",
            ),
        ];
        for (vars, want) in cases {
            // The master variables only where the case is about them (it names them itself).
            let vars = if vars.iter().any(|(k, _)| k.starts_with("MASTER_")) {
                vars.to_vec()
            } else {
                with_master(vars)
            };
            let err = format!("{:#}", parse(&vars).unwrap_err());
            assert!(err.contains(want), "{vars:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn the_gpu_is_the_local_rank_unless_one_is_visible() {
        let env = |local_rank| LaunchEnv {
            launcher: "torchrun",
            rank: 3,
            world_size: 4,
            local_rank,
            master_addr: "h".into(),
            master_port: 1,
        };
        assert_eq!(env(1).cuda_ordinal(None, None).unwrap(), 1);
        assert_eq!(env(1).cuda_ordinal(Some("0,1"), None).unwrap(), 1);
        // Slurm's --gpus-per-task=1: this process sees its own GPU only, as cuda:0.
        assert_eq!(env(1).cuda_ordinal(Some("5"), None).unwrap(), 0);
        assert_eq!(env(1).cuda_ordinal(None, Some("cuda:1")).unwrap(), 1);
        let err = format!(
            "{:#}",
            env(1).cuda_ordinal(None, Some("cuda:0")).unwrap_err()
        );
        assert!(
            err.contains("--device cuda:0") && err.contains("--device cuda:1"),
            "{err}"
        );
        let err = format!("{:#}", env(2).cuda_ordinal(None, Some("cpu")).unwrap_err());
        assert!(err.contains("trains on cuda:2"), "{err}");
        let err = format!("{:#}", env(2).cuda_ordinal(Some("0,1"), None).unwrap_err());
        assert!(
            err.contains("CUDA_VISIBLE_DEVICES=\"0,1\" shows 2 GPUs"),
            "{err}"
        );
    }
}
