//! The operation mix: which calls the generator sends (`--mix get=80,set=15,invalidate=5`).

use std::str::FromStr;

use rand::Rng as _;
use rand::rngs::SmallRng;

/// The operations the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Op {
    Get,
    Set,
    Invalidate,
}

impl Op {
    pub(crate) const ALL: [Op; 3] = [Op::Get, Op::Set, Op::Invalidate];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Invalidate => "invalidate",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Operation weights, e.g. `get=80,set=15,invalidate=5`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mix {
    pub(crate) weights: [u32; 3],
}

impl Mix {
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> Op {
        let total: u32 = self.weights.iter().sum();
        let mut roll = rng.random_range(0..total);
        for op in Op::ALL {
            if roll < self.weights[op.index()] {
                return op;
            }
            roll -= self.weights[op.index()];
        }
        Op::Get
    }
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 3];
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected op=weight"))?;
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{part}`: the weight must be a whole number"))?;
            let op = match name.trim() {
                "get" => Op::Get,
                "set" => Op::Set,
                "invalidate" => Op::Invalidate,
                other => return Err(format!("unknown op `{other}` (get, set, invalidate)")),
            };
            weights[op.index()] = weight;
        }
        if weights.iter().sum::<u32>() == 0 {
            return Err("the mix needs at least one positive weight".to_owned());
        }
        Ok(Self { weights })
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn mix_parses_and_picks_only_weighted_ops() {
        let mix: Mix = "get=80,set=15,invalidate=5".parse().unwrap();
        assert_eq!(mix.weights, [80, 15, 5]);
        let only_sets: Mix = "set=1".parse().unwrap();
        let mut rng = SmallRng::seed_from_u64(1);
        assert!((0..1000).all(|_| only_sets.pick(&mut rng) == Op::Set));
        assert!("get=0".parse::<Mix>().is_err());
        assert!("read=5".parse::<Mix>().is_err());
    }
}
