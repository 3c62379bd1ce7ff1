//! The span time bounds of `operators/span_times.py` (`SpanTimeBounds`), with the same reject
//! texts: the differential test compares them character for character.
//!
//! Times are i128 here: OTLP carries fixed64 (up to 2^64 - 1), Avro a signed long, and the
//! Python reference computes on unbounded ints, so no sum below may wrap.

#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub limit_ns: i128,
    pub max_skew_ns: i128,
    pub now_ns: i128,
}

/// Python's `//` (floor division) for the millisecond figures of the texts.
fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

impl Bounds {
    pub fn latest(&self) -> i128 {
        (self.now_ns + self.max_skew_ns).min(self.limit_ns)
    }

    pub fn ok(&self, start: i128, end: i128) -> bool {
        0 < end
            && end <= self.latest()
            && 0 < start
            && start <= end + self.max_skew_ns
            && start <= self.limit_ns
    }

    /// `SpanTimeBounds.explain`: why (start, end) is out of bounds.
    pub fn explain(&self, place: &str, start: i128, end: i128) -> String {
        let latest = self.latest();
        let skew_ms = floor_div(self.max_skew_ns, 1_000_000);
        if end <= 0 || start <= 0 {
            return format!("{place} start {start} / end {end} ns: times must be > 0");
        }
        if end > self.limit_ns || start > self.limit_ns {
            return format!(
                "{place} start {start} / end {end} ns: beyond {} (2^63 - 1 - the SLI window)",
                self.limit_ns
            );
        }
        if end > latest {
            let ahead_ms = floor_div(end - self.now_ns, 1_000_000);
            return format!(
                "{place} ends {ahead_ms} ms ahead of the worker clock (ingest.max_clock_skew_ms = {skew_ms})"
            );
        }
        format!(
            "{place} starts {} ms after it ends (ingest.max_clock_skew_ms = {skew_ms})",
            floor_div(start - end, 1_000_000)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        limit_ns: i64::MAX as i128 - 60_000_000_000,
        max_skew_ns: 300_000_000_000,
        now_ns: 1_700_000_000_000_000_000,
    };

    #[test]
    fn zero_and_negative_times_are_refused() {
        assert!(!B.ok(0, 5));
        assert!(!B.ok(5, 0));
        assert!(!B.ok(-1, 5));
        assert_eq!(
            B.explain("a span", 0, 5),
            "a span start 0 / end 5 ns: times must be > 0"
        );
    }

    #[test]
    fn future_end_is_explained_in_ms_ahead() {
        let end = B.now_ns + B.max_skew_ns + 1_500_000;
        assert!(!B.ok(end - 1, end));
        assert_eq!(
            B.explain("span 0:", end - 1, end),
            "span 0: ends 300001 ms ahead of the worker clock (ingest.max_clock_skew_ms = 300000)"
        );
    }

    #[test]
    fn beyond_limit_and_start_after_end() {
        let big = u64::MAX as i128;
        assert!(B
            .explain("a span", 1, big)
            .contains("beyond 9223371976854775807"));
        assert_eq!(
            B.explain(
                "a span",
                1_000_000_000_000 + 301_000_000_000,
                1_000_000_000_000
            ),
            "a span starts 301000 ms after it ends (ingest.max_clock_skew_ms = 300000)"
        );
        assert!(B.ok(1_000, 2_000));
    }

    #[test]
    fn floor_division_matches_python() {
        assert_eq!(floor_div(-1, 1_000_000), -1);
        assert_eq!(floor_div(1_999_999, 1_000_000), 1);
    }
}
