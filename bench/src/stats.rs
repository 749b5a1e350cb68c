//! Latency samples and their percentiles.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// The distribution for the plots: `(percentile, ms)`, up to 200 points.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub curve: Vec<(f64, f64)>,
}

impl Summary {
    pub fn of(samples: &[Duration]) -> Summary {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        Self::of_ms(&mut ms)
    }

    pub fn of_ms(ms: &mut [f64]) -> Summary {
        if ms.is_empty() {
            return Summary::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |p: f64| percentile(ms, p);
        // Denser towards the tail, where the interesting part of a latency
        // distribution is: 0..90 by 1, then 90..99.9 in finer steps.
        let mut points: Vec<f64> = (0..90).map(f64::from).collect();
        points.extend((0..90).map(|i| 90.0 + f64::from(i) * 0.1));
        points.extend((0..10).map(|i| 99.0 + f64::from(i) * 0.1));
        points.push(100.0);
        Summary {
            n: ms.len(),
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: ms[ms.len() - 1],
            mean: ms.iter().sum::<f64>() / ms.len() as f64,
            curve: points.into_iter().map(|p| (p, at(p))).collect(),
        }
    }

    /// The same without the curve, for tables and compact JSON.
    pub fn brief(&self) -> Summary {
        Summary {
            curve: Vec::new(),
            ..self.clone()
        }
    }
}

/// The `p`-th percentile (0..=100) of sorted samples, nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `a / b`, or `None` when `b` is not a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&samples, 0.0), 1.0);
    }

    #[test]
    fn a_summary_of_nothing_is_empty() {
        assert_eq!(Summary::of(&[]).n, 0);
    }

    #[test]
    fn a_summary_reads_milliseconds() {
        let s = Summary::of(&[Duration::from_millis(2), Duration::from_millis(4)]);
        assert_eq!((s.n, s.p50, s.max), (2, 2.0, 4.0));
        assert_eq!(s.mean, 3.0);
    }
}
