//! Quantiles of a Prometheus histogram on the daemon's `/metrics`, between two scrapes: how
//! loadgen reads figures only the daemon can measure (the stream hop, from the append of a
//! record to its read).

/// A histogram's cumulative buckets, `(upper bound, count)`, lowest bound first.
pub type Buckets = Vec<(f64, f64)>;

/// The buckets of histogram `name` in a text exposition; `None` if it has none.
pub fn parse(text: &str, name: &str) -> Option<Buckets> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Buckets = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, rest.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (!buckets.is_empty()).then_some(buckets)
}

/// How many observations fell between the scrapes `before` and `after`.
pub fn count(before: &Buckets, after: &Buckets) -> f64 {
    let last = |b: &Buckets| b.last().map_or(0.0, |(_, n)| *n);
    last(after) - last(before)
}

/// The `q`-quantile of the observations made between the scrapes `before` and `after`,
/// interpolated linearly within its bucket (as Prometheus' `histogram_quantile` does); `None`
/// without observations, or when it falls in the `+Inf` bucket.
pub fn quantile(before: &Buckets, after: &Buckets, q: f64) -> Option<f64> {
    let earlier = |le: f64| {
        before
            .iter()
            .find(|(b, _)| *b == le)
            .map_or(0.0, |(_, n)| *n)
    };
    let deltas: Vec<(f64, f64)> = after.iter().map(|&(le, n)| (le, n - earlier(le))).collect();
    let total = deltas.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &deltas {
        if n >= rank {
            if le.is_infinite() {
                return None;
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                0.0
            };
            return Some(lower.0 + (le - lower.0) * within);
        }
        lower = (le, n);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = "# TYPE x histogram\n\
        x_bucket{le=\"0.001\"} 10\nx_bucket{le=\"0.002\"} 10\nx_bucket{le=\"0.004\"} 10\n\
        x_bucket{le=\"+Inf\"} 10\nx_sum 0.005\nx_count 10\n";
    const AFTER: &str = "x_bucket{le=\"0.001\"} 60\nx_bucket{le=\"0.002\"} 100\n\
        x_bucket{le=\"0.004\"} 109\nx_bucket{le=\"+Inf\"} 110\n";

    #[test]
    fn quantiles_count_only_what_happened_between_the_scrapes() {
        let (before, after) = (parse(BEFORE, "x").unwrap(), parse(AFTER, "x").unwrap());
        assert_eq!(count(&before, &after), 100.0);
        // 50 of the 100 new observations are at most 1 ms: the median is at 1 ms.
        assert!((quantile(&before, &after, 0.5).unwrap() - 0.001).abs() < 1e-12);
        // The 70th is halfway through the 1–2 ms bucket (40 observations).
        assert!((quantile(&before, &after, 0.70).unwrap() - 0.0015).abs() < 1e-12);
        // The 99th falls in 2–4 ms; the 100th beyond every bound.
        let p99 = quantile(&before, &after, 0.99).unwrap();
        assert!(p99 > 0.002 && p99 <= 0.004, "{p99}");
        assert_eq!(quantile(&before, &after, 1.0), None);
    }

    #[test]
    fn no_observations_no_quantile() {
        let before = parse(BEFORE, "x").unwrap();
        assert_eq!(quantile(&before, &before, 0.5), None);
        assert_eq!(parse(BEFORE, "y"), None);
    }
}
