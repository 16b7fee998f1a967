//! A Zipf sampler over ranks `0..n`: rank `k` (0 = the most popular) is drawn
//! with probability proportional to `1 / (k + 1)^s`. Exact: the cumulative
//! distribution is precomputed once and each draw is one uniform number and a
//! binary search, which is cheap for the thousands of ranks the workloads use.

use rand::Rng;

/// The distribution, shared read-only by every worker thread.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// `cdf[k]` = P(rank ≤ k); the last entry is exactly 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// Zipf with exponent `s` over `n` ranks (`s = 0` is uniform).
    ///
    /// # Panics
    /// If `n` is 0 or `s` is negative or not finite: a benchmark constant is wrong.
    pub fn new(n: usize, s: f64) -> Zipf {
        assert!(n > 0, "a Zipf distribution needs at least one rank");
        assert!(
            s.is_finite() && s >= 0.0,
            "the Zipf exponent must be ≥ 0, not {s}"
        );
        let mut total = 0.0;
        let mut cdf: Vec<f64> = (1..=n)
            .map(|k| {
                total += (k as f64).powf(-s);
                total
            })
            .collect();
        for c in &mut cdf {
            *c /= total;
        }
        cdf[n - 1] = 1.0;
        Zipf { cdf }
    }

    /// How many ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// The probability of rank `k` (0-based).
    pub fn probability(&self, k: usize) -> f64 {
        match k {
            0 => self.cdf[0],
            k if k < self.cdf.len() => self.cdf[k] - self.cdf[k - 1],
            _ => 0.0,
        }
    }

    /// Draws a rank in `0..len()`.
    pub fn sample(&self, rng: &mut impl Rng) -> usize {
        let u: f64 = rng.random();
        self.cdf.partition_point(|&c| c <= u).min(self.cdf.len() - 1)
    }

    /// Draws two different ranks, each from this distribution (the second is
    /// redrawn until it differs from the first).
    pub fn sample_pair(&self, rng: &mut impl Rng) -> (usize, usize) {
        assert!(self.len() > 1, "a pair needs two ranks");
        let a = self.sample(rng);
        loop {
            let b = self.sample(rng);
            if b != a {
                return (a, b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The n-th harmonic number: the normalising constant of Zipf with s = 1.
    fn harmonic(n: usize) -> f64 {
        (1..=n).map(|k| 1.0 / k as f64).sum()
    }

    #[test]
    fn probabilities_follow_the_law() {
        let z = Zipf::new(1000, 1.0);
        let total: f64 = (0..1000).map(|k| z.probability(k)).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let p0 = 1.0 / harmonic(1000);
        assert!((z.probability(0) - p0).abs() < 1e-12);
        assert!((0.1335..0.1337).contains(&p0), "H(1000) ≈ 7.4855: {p0}");
        assert!((z.probability(0) / z.probability(1) - 2.0).abs() < 1e-9);
        assert!((z.probability(9) / z.probability(99) - 10.0).abs() < 1e-9);
        assert_eq!(z.probability(1000), 0.0);
        let uniform = Zipf::new(4, 0.0);
        assert!((0..4).all(|k| (uniform.probability(k) - 0.25).abs() < 1e-12));
    }

    #[test]
    fn samples_match_the_distribution_roughly() {
        let z = Zipf::new(1000, 1.0);
        let mut rng = StdRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; 1000];
        for _ in 0..draws {
            counts[z.sample(&mut rng)] += 1;
        }
        let freq = |range: std::ops::Range<usize>| counts[range].iter().sum::<u64>() as f64 / draws as f64;
        let prob = |range: std::ops::Range<usize>| range.map(|k| z.probability(k)).sum::<f64>();
        // Binomial standard deviation at 200k draws is ≤ 0.0012: allow ~4σ.
        for range in [0..1, 1..2, 0..10, 10..100, 100..1000, 999..1000] {
            let (f, p) = (freq(range.clone()), prob(range.clone()));
            assert!(
                (f - p).abs() < 0.005,
                "ranks {range:?}: drew {f:.4}, expected {p:.4}"
            );
        }
        // With s = 1, rank 0 is drawn ten times as often as rank 9.
        let ratio = counts[0] as f64 / counts[9] as f64;
        assert!((8.5..11.5).contains(&ratio), "rank 0 / rank 9 = {ratio:.2}");
    }

    #[test]
    fn pairs_differ_and_stay_in_range() {
        let z = Zipf::new(3, 1.0);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let (a, b) = z.sample_pair(&mut rng);
            assert!(a != b && a < 3 && b < 3);
        }
        assert_eq!(Zipf::new(1, 1.0).sample(&mut rng), 0);
    }
}
