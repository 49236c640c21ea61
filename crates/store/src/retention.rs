//! Which old versions to keep: keep-last N, keep-within a duration, and a
//! staggered policy like Syncthing's (denser for recent history).

use serde::{Deserialize, Serialize};

const SEC: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SEC;
const DAY: i64 = 24 * HOUR;

/// A retention policy. With no rule set, every version is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetentionPolicy {
    /// Keep the newest N versions of each path.
    pub keep_last: Option<u32>,
    /// Keep versions younger than this many seconds.
    pub keep_within_secs: Option<u64>,
    /// Keep one version per 30 s for the last hour, per hour for the last day,
    /// per day for 30 days, then per week up to `staggered_max_age_secs`.
    pub staggered: bool,
    /// Oldest version the staggered rule keeps (default one year).
    pub staggered_max_age_secs: Option<u64>,
}

impl RetentionPolicy {
    /// Whether some rule is set (otherwise nothing is pruned).
    pub fn prunes(&self) -> bool {
        self.keep_last.is_some() || self.keep_within_secs.is_some() || self.staggered
    }

    /// Given version times (ns) newest first, which to keep. The newest is always kept.
    pub fn select(&self, times_newest_first: &[i64], now_ns: i64) -> Vec<bool> {
        let n = times_newest_first.len();
        if !self.prunes() {
            return vec![true; n];
        }
        let mut keep = vec![false; n];
        if n > 0 {
            keep[0] = true;
        }
        if let Some(k) = self.keep_last {
            for slot in keep.iter_mut().take(k as usize) {
                *slot = true;
            }
        }
        if let Some(w) = self.keep_within_secs {
            let horizon = now_ns.saturating_sub((w as i64).saturating_mul(SEC));
            for (i, &t) in times_newest_first.iter().enumerate() {
                if t >= horizon {
                    keep[i] = true;
                }
            }
        }
        if self.staggered {
            let max_age = self.staggered_max_age_secs.unwrap_or(365 * 86400) as i64 * SEC;
            let mut seen_buckets = std::collections::HashSet::new();
            // Oldest first, so each bucket keeps its oldest version (as Syncthing does).
            for (i, &t) in times_newest_first.iter().enumerate().rev() {
                let age = now_ns.saturating_sub(t).max(0);
                if age > max_age {
                    continue;
                }
                let bucket = if age < HOUR {
                    (0, age / (30 * SEC))
                } else if age < DAY {
                    (1, age / HOUR)
                } else if age < 30 * DAY {
                    (2, age / DAY)
                } else {
                    (3, age / (7 * DAY))
                };
                if seen_buckets.insert(bucket) {
                    keep[i] = true;
                }
            }
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rule_keeps_everything() {
        assert_eq!(
            RetentionPolicy::default().select(&[3, 2, 1], 10),
            vec![true; 3]
        );
    }

    #[test]
    fn keep_last_and_within_combine() {
        let p = RetentionPolicy {
            keep_last: Some(2),
            keep_within_secs: Some(10),
            ..Default::default()
        };
        let now = 1000 * SEC;
        let times = [999 * SEC, 998 * SEC, 995 * SEC, 900 * SEC, 800 * SEC];
        assert_eq!(p.select(&times, now), vec![true, true, true, false, false]);
    }

    #[test]
    fn staggered_thins_old_history() {
        let p = RetentionPolicy {
            staggered: true,
            ..Default::default()
        };
        let now = 100 * DAY;
        // One version a minute for two days.
        let times: Vec<i64> = (0..2 * 24 * 60).map(|m| now - m * 60 * SEC).collect();
        let kept = p.select(&times, now).iter().filter(|k| **k).count();
        // ~60 in the last hour (30 s buckets, 1/min versions), ~23 hourly, ~2 daily.
        assert!(kept > 60 && kept < 100, "kept {kept}");
        assert!(p.select(&times, now)[0]);
    }
}
