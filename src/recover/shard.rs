//! Splitting one `run` over many processes (`run --shard I/N`): shard I of N runs the batches whose
//! position in the run's batch list is I modulo N, and the real part's classes that are I modulo N.
//! Every batch's random stream depends only on the seed and the batch's identity
//! (`recover::batch_rng`), so the union of the N shards' images is byte for byte what one process
//! would write, whatever N, order or interleaving.
//!
//! `--shard auto` takes the index and count from the scheduler's environment: Slurm job arrays
//! (`SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT`, or with `SLURM_ARRAY_TASK_MIN`/`MAX`),
//! torchrun-style launchers (`RANK` with `WORLD_SIZE`); `--shard auto/N` takes the index from
//! `JOB_COMPLETION_INDEX` (Kubernetes Indexed Jobs), `SLURM_ARRAY_TASK_ID` or `RANK` and the count N
//! from the command line.

use crate::error::{Error, Result};

/// One process's part of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index, below `count`.
    pub index: usize,
    pub count: usize,
    /// Where the numbers came from ("--shard 1/4", "SLURM_ARRAY_TASK_ID=2 of SLURM_ARRAY_TASK_COUNT=4").
    pub source: String,
}

impl Shard {
    /// `I/N` (0-based I), `auto` or `auto/N`, reading the environment through `env` for `auto`.
    ///
    /// Errors (`Error::Option`): a malformed value, I >= N, N = 0, and `auto` where the environment
    /// gives no index or count (the message lists the variables looked for).
    pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Shard> {
        let bad = |why: String| Error::Option(format!("--shard {text}: {why}"));
        let num = |v: &str, what: &str| v.trim().parse::<usize>().map_err(|_| bad(format!("{what} {v:?} is not a whole number")));
        let (index, count, source) = match text.split_once('/') {
            Some(("auto", n)) => {
                let count = num(n, "the count")?;
                let (var, v) = ["JOB_COMPLETION_INDEX", "SLURM_ARRAY_TASK_ID", "RANK"]
                    .iter()
                    .find_map(|var| env(var).map(|v| (*var, v)))
                    .ok_or_else(|| bad("none of JOB_COMPLETION_INDEX, SLURM_ARRAY_TASK_ID or RANK is set".into()))?;
                let mut index = num(&v, var)?;
                if var == "SLURM_ARRAY_TASK_ID" {
                    index -= env("SLURM_ARRAY_TASK_MIN").map(|m| num(&m, "SLURM_ARRAY_TASK_MIN")).transpose()?.unwrap_or(0).min(index);
                }
                (index, count, format!("{var}={v} of {count} (--shard {text})"))
            }
            Some((i, n)) => (num(i, "the index")?, num(n, "the count")?, format!("--shard {text}")),
            None if text == "auto" => Self::from_env(env).map_err(bad)?,
            None => return Err(bad("expected I/N (0-based I below N), auto or auto/N".into())),
        };
        if count == 0 {
            return Err(bad("the count must be at least 1".into()));
        }
        if index >= count {
            return Err(bad(format!("index {index} is not below the count {count} (shards are numbered 0..{})", count - 1)));
        }
        Ok(Shard { index, count, source })
    }

    /// The scheduler's index and count: Slurm's job array, else torchrun's rank and world size.
    fn from_env(env: &dyn Fn(&str) -> Option<String>) -> std::result::Result<(usize, usize, String), String> {
        let num = |var: &str| -> std::result::Result<Option<usize>, String> {
            env(var).map(|v| v.trim().parse::<usize>().map_err(|_| format!("{var}={v:?} is not a whole number"))).transpose()
        };
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let (min, max) = (num("SLURM_ARRAY_TASK_MIN")?, num("SLURM_ARRAY_TASK_MAX")?);
            return match (num("SLURM_ARRAY_TASK_COUNT")?, min, max) {
                (Some(count), min, _) => {
                    let min = min.unwrap_or(0).min(id);
                    Ok((id - min, count, format!("SLURM_ARRAY_TASK_ID={id} of SLURM_ARRAY_TASK_COUNT={count}")))
                }
                (None, Some(min), Some(max)) if max >= min && id >= min => {
                    Ok((id - min, max - min + 1, format!("SLURM_ARRAY_TASK_ID={id} in SLURM_ARRAY_TASK_MIN..MAX={min}..{max}")))
                }
                _ => Err("SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT nor SLURM_ARRAY_TASK_MIN/MAX".into()),
            };
        }
        if let (Some(rank), Some(world)) = (num("RANK")?, num("WORLD_SIZE")?) {
            return Ok((rank, world, format!("RANK={rank} of WORLD_SIZE={world}")));
        }
        Err("no scheduler index in the environment (SLURM_ARRAY_TASK_ID with SLURM_ARRAY_TASK_COUNT or MIN/MAX, or RANK with WORLD_SIZE); for a Kubernetes Indexed Job give the count: --shard auto/N".into())
    }

    /// Whether this shard runs item `position` of a list split round-robin.
    pub fn owns(&self, position: usize) -> bool {
        position % self.count == self.index
    }

    /// "I-of-N", for file names.
    pub fn tag(&self) -> String {
        format!("{}-of-{}", self.index, self.count)
    }
}

/// The file that holds shard `index` of `count`'s record beside the set's images.
pub fn record_file(index: usize, count: usize) -> String {
    format!("recover_record.shard-{index}-of-{count}.json")
}

/// (index, count) of a shard record's file name, for [`record_file`]'s names.
pub fn parse_record_file(name: &str) -> Option<(usize, usize)> {
    let rest = name.strip_prefix("recover_record.shard-")?.strip_suffix(".json")?;
    let (i, n) = rest.split_once("-of-")?;
    Some((i.parse().ok()?, n.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(a, _)| *a == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn explicit_and_scheduler_shards() {
        let none = env_of(&[]);
        assert_eq!(Shard::parse("2/4", &none).unwrap(), Shard { index: 2, count: 4, source: "--shard 2/4".into() });
        assert!(Shard::parse("4/4", &none).unwrap_err().to_string().contains("not below the count 4"));
        assert!(Shard::parse("0/0", &none).is_err());
        assert!(Shard::parse("x/2", &none).is_err());
        assert!(Shard::parse("auto", &none).unwrap_err().to_string().contains("SLURM_ARRAY_TASK_ID"));
        // Slurm arrays numbered 1..4 (MIN/MAX) and 0..3 (COUNT).
        let s = Shard::parse("auto", &env_of(&[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_MAX", "4")])).unwrap();
        assert_eq!((s.index, s.count), (2, 4));
        let s = Shard::parse("auto", &env_of(&[("SLURM_ARRAY_TASK_ID", "0"), ("SLURM_ARRAY_TASK_COUNT", "4")])).unwrap();
        assert_eq!((s.index, s.count), (0, 4));
        let s = Shard::parse("auto", &env_of(&[("RANK", "1"), ("WORLD_SIZE", "2")])).unwrap();
        assert_eq!((s.index, s.count), (1, 2));
        // Kubernetes Indexed Jobs give only the index.
        let s = Shard::parse("auto/3", &env_of(&[("JOB_COMPLETION_INDEX", "2")])).unwrap();
        assert_eq!((s.index, s.count), (2, 3));
        assert!(Shard::parse("auto/3", &env_of(&[("JOB_COMPLETION_INDEX", "3")])).is_err());
        assert_eq!(parse_record_file(&record_file(2, 5)), Some((2, 5)));
        assert!((0..12).filter(|&p| s.owns(p)).eq([2, 5, 8, 11]));
    }
}
