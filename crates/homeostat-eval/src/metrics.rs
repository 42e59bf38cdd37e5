//! Detection metrics over per-trace scores: ROC AUC, detection rate at a fixed
//! false-alarm rate, ROC curves.
//!
//! Conventions, fixed so results compare across papers and tools: an alarm is raised
//! when `score >= threshold`; AUC is the Mann-Whitney statistic with ties counted as
//! 0.5 (the probability that a random attack trace outscores a random normal one); the
//! operating point for a false-alarm limit is the lowest threshold whose false-alarm
//! rate is within the limit.

/// ROC area by Mann-Whitney U with average ranks for ties. `None` when one side is empty.
pub fn auc(normal: &[f64], attack: &[f64]) -> Option<f64> {
    if normal.is_empty() || attack.is_empty() {
        return None;
    }
    let mut all: Vec<(f64, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(attack.iter().map(|&s| (s, true)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j share their average.
        let avg = (i + 1 + j) as f64 / 2.0;
        rank_sum += avg * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (np, nn) = (attack.len() as f64, normal.len() as f64);
    Some((rank_sum - np * (np + 1.0) / 2.0) / (np * nn))
}

/// Fraction of `scores` at or above `threshold`.
pub fn rate_at(scores: &[f64], threshold: f64) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    scores.iter().filter(|&&s| s >= threshold).count() as f64 / scores.len() as f64
}

/// An operating point: threshold and the rates it gives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OperatingPoint {
    /// Alarm when score >= this (`f64::INFINITY`: never).
    pub threshold: f64,
    /// False-alarm rate on normal traces.
    pub far: f64,
    /// Detection rate on attack traces.
    pub dr: f64,
}

/// The lowest threshold whose false-alarm rate is at most `limit`, with its rates.
///
/// Candidates are the observed scores; for integer scores (`integer`, e.g. LFC) also
/// each normal score plus one, so the threshold is the smallest count that alarms, not
/// the next attack's score. Rates are the same either way; the threshold matters for
/// detection delay.
pub fn at_far(normal: &[f64], attack: &[f64], limit: f64, integer: bool) -> OperatingPoint {
    let mut candidates: Vec<f64> = normal.iter().chain(attack).copied().collect();
    if integer {
        candidates.extend(normal.iter().map(|v| v + 1.0));
    }
    candidates.push(f64::INFINITY);
    candidates.sort_by(f64::total_cmp);
    candidates.dedup();
    let mut sorted_normal = normal.to_vec();
    sorted_normal.sort_by(f64::total_cmp);
    let n = sorted_normal.len().max(1) as f64;
    // False alarms fall as the threshold rises: take the first candidate within limit.
    let threshold = candidates
        .iter()
        .copied()
        .find(|&t| {
            let below = sorted_normal.partition_point(|&s| s < t);
            (sorted_normal.len() - below) as f64 / n <= limit
        })
        .unwrap_or(f64::INFINITY);
    OperatingPoint {
        threshold,
        far: rate_at(normal, threshold),
        dr: rate_at(attack, threshold),
    }
}

/// ROC curve points (false-alarm rate, detection rate) from the strictest threshold
/// to the most lenient, starting at (0, 0) and ending at (1, 1).
pub fn roc(normal: &[f64], attack: &[f64]) -> Vec<(f64, f64)> {
    let mut thresholds: Vec<f64> = normal.iter().chain(attack).copied().collect();
    thresholds.sort_by(|a, b| b.total_cmp(a));
    thresholds.dedup();
    let mut pts = vec![(0.0, 0.0)];
    let mut n = normal.to_vec();
    let mut a = attack.to_vec();
    n.sort_by(f64::total_cmp);
    a.sort_by(f64::total_cmp);
    let above = |v: &[f64], t: f64| (v.len() - v.partition_point(|&s| s < t)) as f64;
    for t in thresholds {
        pts.push((
            above(&n, t) / n.len().max(1) as f64,
            above(&a, t) / a.len().max(1) as f64,
        ));
    }
    if pts.last() != Some(&(1.0, 1.0)) {
        pts.push((1.0, 1.0));
    }
    pts
}

/// Median of a list (mean of the middle two for even lengths); `None` when empty.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let m = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[m]
    } else {
        (values[m - 1] + values[m]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_by_hand() {
        // Pairs (attack > normal): 3>1,3>2 ; 2 vs 2 tie = .5 ; 2>1 -> (2 + .5 + 1) / 4.
        assert_eq!(auc(&[1.0, 2.0], &[3.0, 2.0]), Some(3.5 / 4.0));
        assert_eq!(auc(&[0.0, 0.0], &[0.0]), Some(0.5));
        assert_eq!(auc(&[0.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auc(&[5.0], &[1.0]), Some(0.0));
        assert_eq!(auc(&[], &[1.0]), None);
    }

    #[test]
    fn far_operating_points_by_hand() {
        let normal: Vec<f64> = (0..100).map(|i| if i < 95 { 0.0 } else { 5.0 }).collect();
        let attack = [0.0, 3.0, 5.0, 7.0];
        // 5% of normals score 5: threshold 5 gives FAR .05; anything above 5 gives 0.
        let p = at_far(&normal, &attack, 0.05, false);
        assert_eq!((p.threshold, p.far, p.dr), (3.0, 0.05, 0.75));
        let p = at_far(&normal, &attack, 0.01, false);
        assert_eq!((p.threshold, p.far, p.dr), (7.0, 0.0, 0.25));
        let p = at_far(&normal, &attack, 1.0, false);
        assert_eq!((p.threshold, p.dr), (0.0, 1.0));
        let p = at_far(&[9.0], &[1.0], 0.0, false);
        assert_eq!((p.threshold, p.dr), (f64::INFINITY, 0.0));
        // Integer scores: the smallest count that alarms, same rates.
        let p = at_far(&normal, &attack, 0.05, true);
        assert_eq!((p.threshold, p.far, p.dr), (1.0, 0.05, 0.75));
        let p = at_far(&normal, &attack, 0.01, true);
        assert_eq!((p.threshold, p.far, p.dr), (6.0, 0.0, 0.25));
    }

    #[test]
    fn roc_ends_at_corners() {
        let r = roc(&[0.0, 1.0], &[1.0, 2.0]);
        assert_eq!(r.first(), Some(&(0.0, 0.0)));
        assert_eq!(r.last(), Some(&(1.0, 1.0)));
        assert!(r.contains(&(0.0, 0.5)));
        assert!(r.contains(&(0.5, 1.0)));
    }

    #[test]
    fn median_by_hand() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}
