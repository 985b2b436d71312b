//! Sizes: the `--value-size`, `--max-bytes` and `--expect-size` flags, and how Set value sizes are drawn.

use std::fmt;
use std::str::FromStr;

use rand::Rng as _;
use rand::rngs::SmallRng;

/// `1024`, `1k`, `1KiB`, `1.5m`, `8MB`: binary units (k = 1024).
///
/// Hand-written on purpose: the size crates follow SI (`bytesize` reads `1k` and `1KB` as 1000 bytes, only
/// `1KiB` as 1024), while every flag and script here means 1024 by `k` and `m`; a new dependency that would
/// change what `--value-size 1k` means is not worth twenty lines.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 1024, 1k, 8m)"))?;
    let scale = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use k, m or g)")),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{s}` is not a size"));
    }
    Ok((n * scale as f64).round() as u64)
}

/// How Set value sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SizeSpec {
    Fixed(u64),
    Uniform { lo: u64, hi: u64 },
    LogNormal { lo: u64, hi: u64 },
}

impl SizeSpec {
    pub(crate) fn max(&self) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { hi, .. } | Self::LogNormal { hi, .. } => hi,
        }
    }

    pub(crate) fn sample(&self, rng: &mut SmallRng) -> u64 {
        match *self {
            Self::Fixed(n) => n,
            Self::Uniform { lo, hi } => rng.random_range(lo..=hi),
            Self::LogNormal { lo, hi } => {
                let (ln_lo, ln_hi) = ((lo.max(1) as f64).ln(), (hi.max(1) as f64).ln());
                let (mu, sigma) = ((ln_lo + ln_hi) / 2.0, (ln_hi - ln_lo) / 6.0);
                // Box-Muller: one standard normal from two uniforms.
                let (u1, u2): (f64, f64) =
                    (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                ((mu + sigma * z).exp().round() as u64).clamp(lo, hi)
            }
        }
    }
}

impl FromStr for SizeSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (range, dist) = match s.split_once(':') {
            Some((range, dist)) => (range, Some(dist)),
            None => (s, None),
        };
        let Some((lo, hi)) = range.split_once("..") else {
            if dist.is_some() {
                return Err("a distribution needs a range, e.g. 1k..8m:uniform".to_owned());
            }
            return parse_size(range).map(Self::Fixed);
        };
        let (lo, hi) = (parse_size(lo)?, parse_size(hi)?);
        if lo > hi {
            return Err(format!("`{s}`: the low end is above the high end"));
        }
        match dist.unwrap_or("lognormal") {
            "lognormal" => Ok(Self::LogNormal { lo, hi }),
            "uniform" => Ok(Self::Uniform { lo, hi }),
            other => Err(format!(
                "unknown distribution `{other}` (lognormal or uniform)"
            )),
        }
    }
}

impl fmt::Display for SizeSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Fixed(n) => write!(f, "{n}"),
            Self::Uniform { lo, hi } => write!(f, "{lo}..{hi}:uniform"),
            Self::LogNormal { lo, hi } => write!(f, "{lo}..{hi}:lognormal"),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1.5m"), Ok(3 << 19));
        assert!(parse_size("1x").is_err());
    }

    #[test]
    fn size_specs_parse_fixed_and_ranges() {
        assert_eq!("1k".parse(), Ok(SizeSpec::Fixed(1024)));
        assert_eq!(
            "1k..8m".parse(),
            Ok(SizeSpec::LogNormal {
                lo: 1024,
                hi: 8 << 20
            })
        );
        assert_eq!(
            "1k..2k:uniform".parse(),
            Ok(SizeSpec::Uniform { lo: 1024, hi: 2048 })
        );
        assert!("8m..1k".parse::<SizeSpec>().is_err());
        assert!("1k:uniform".parse::<SizeSpec>().is_err());
    }

    #[test]
    fn size_specs_print_as_they_parse() {
        for spec in ["1024", "1024..2048:uniform", "1024..8388608:lognormal"] {
            assert_eq!(spec.parse::<SizeSpec>().unwrap().to_string(), spec);
        }
    }

    #[test]
    fn sampled_sizes_stay_in_range() {
        let mut rng = SmallRng::seed_from_u64(7);
        for spec in [
            SizeSpec::LogNormal {
                lo: 1024,
                hi: 8 << 20,
            },
            SizeSpec::Uniform { lo: 10, hi: 20 },
        ] {
            for _ in 0..10_000 {
                let n = spec.sample(&mut rng);
                assert!(
                    (spec_lo(spec)..=spec.max()).contains(&n),
                    "{n} outside {spec}"
                );
            }
        }
    }

    fn spec_lo(spec: SizeSpec) -> u64 {
        match spec {
            SizeSpec::Fixed(n) => n,
            SizeSpec::Uniform { lo, .. } | SizeSpec::LogNormal { lo, .. } => lo,
        }
    }
}
