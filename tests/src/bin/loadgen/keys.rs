//! Key popularity: which of the `--keys` keys a call uses, uniformly or by Zipf's law (`--zipf S`).

use anyhow::bail;
use rand::Rng as _;
use rand::rngs::SmallRng;
use rand_distr::{Distribution as _, Zipf};

/// Picks key indexes in `0..n`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyChooser {
    /// Every key equally likely.
    Uniform(u64),
    /// Zipf over ranks `1..=n` with exponent `s` (rank 1, the most popular, is key 0), sampled by rejection in
    /// O(1) memory and time whatever the key space. `s = 0` is uniform.
    Zipf { n: u64, zipf: Zipf<f64> },
}

impl KeyChooser {
    /// Uniform over `n` keys, or Zipf with exponent `zipf` when given.
    pub(crate) fn new(n: u64, zipf: Option<f64>) -> anyhow::Result<Self> {
        let Some(s) = zipf else {
            return Ok(Self::Uniform(n));
        };
        // `Zipf::new` accepts an infinite exponent (and then samples NaN); the flag does not.
        if !(s.is_finite() && s >= 0.0) || n == 0 {
            bail!("--zipf needs an exponent >= 0 and at least one key");
        }
        let zipf = Zipf::new(n as f64, s).map_err(|e| anyhow::anyhow!("--zipf {s}: {e}"))?;
        Ok(Self::Zipf { n, zipf })
    }

    /// A key index in `0..n`.
    pub(crate) fn pick(&self, rng: &mut SmallRng) -> u64 {
        match *self {
            Self::Uniform(n) => rng.random_range(0..n),
            // Samples are whole ranks in 1..=n; the clamp only guards against rounding at the top.
            Self::Zipf { n, zipf } => (zipf.sample(rng) as u64).clamp(1, n) - 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    /// How often each key was picked in `samples` draws.
    fn counts(chooser: KeyChooser, n: u64, samples: u32, seed: u64) -> Vec<u32> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..samples {
            let key = chooser.pick(&mut rng);
            assert!(key < n, "key {key} outside 0..{n}");
            counts[key as usize] += 1;
        }
        counts
    }

    #[test]
    fn zipf_matches_the_analytic_frequencies_of_the_top_ranks() {
        const SAMPLES: u32 = 500_000;
        let n = 1000;
        for s in [0.99, 1.0, 1.1] {
            let counts = counts(KeyChooser::new(n, Some(s)).unwrap(), n, SAMPLES, 3);
            // P(rank k) = k^-s / H(n, s), H the generalized harmonic number.
            let h: f64 = (1..=n).map(|k| (k as f64).powf(-s)).sum();
            for rank in 1..=5u64 {
                let expected = (rank as f64).powf(-s) / h;
                let seen = f64::from(counts[rank as usize - 1]) / f64::from(SAMPLES);
                assert!(
                    (seen - expected).abs() <= 0.05 * expected,
                    "s = {s}, rank {rank}: frequency {seen:.5}, expected {expected:.5}"
                );
            }
            assert!(counts[0] > counts[10] && counts[10] > counts[500]);
        }
    }

    #[test]
    fn zipf_with_exponent_zero_is_uniform() {
        let n = 10;
        let counts = counts(KeyChooser::new(n, Some(0.0)).unwrap(), n, 100_000, 5);
        for (key, &c) in counts.iter().enumerate() {
            let seen = f64::from(c) / 100_000.0;
            assert!((seen - 0.1).abs() < 0.005, "key {key}: frequency {seen}");
        }
    }

    #[test]
    fn one_key_is_always_key_zero() {
        let counts = counts(KeyChooser::new(1, Some(1.2)).unwrap(), 1, 1000, 9);
        assert_eq!(counts, [1000]);
    }

    #[test]
    fn bad_exponents_are_refused() {
        for s in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(KeyChooser::new(100, Some(s)).is_err(), "{s} accepted");
        }
        assert!(KeyChooser::new(0, Some(1.0)).is_err());
    }
}
