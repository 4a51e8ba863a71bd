//! What one run of the engine did, for people (one line) and for Prometheus.

use std::fmt;
use std::time::Duration;

use crate::period::Month;

/// One offering's run: a report cycle or a historical load. Resource counts are
/// resource-months, each counted once under its outcome; write counts are requests.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    pub offering: String,
    pub backend_type: String,
    /// The component that served the run: `name version`.
    pub backend: String,
    /// The months asked for.
    pub range: Option<(Month, Month)>,
    /// Months completed.
    pub months: usize,
    /// Resources per month.
    pub resources: usize,
    /// Resource-months with at least one value written (to be written, in a dry run).
    pub submitted: usize,
    /// Resource-months where Waldur already held every value.
    pub unchanged: usize,
    /// Resource-months the upstream did not mention, where nothing was written.
    pub absent: usize,
    /// Resource-months not written for a reason that is no failure (an Erred resource,
    /// a month Waldur cannot be written into safely, a stop request).
    pub skipped: usize,
    pub failed: usize,
    /// `set_usage` requests.
    pub totals_submitted: usize,
    /// Per-user requests (one bulk `set_user_usages`, or one `set_user_usage` per user).
    pub user_usage_writes: usize,
    /// Per-user values written.
    pub user_usages_submitted: usize,
    pub upstream_calls: u64,
    pub waldur_calls: u64,
    pub duration: Duration,
    pub dry_run: bool,
    /// Months a stop request (a signal) left unfinished, oldest first.
    pub unfinished: Vec<Month>,
    /// What keeps writes of this offering out after the run (a hold on past months,
    /// a Waldur that does not answer, a refusal of the token), one line each: what
    /// `healthz` and the metrics report until a later run clears it.
    pub held: Vec<String>,
    /// One line per error, for the operator. Any error fails the command.
    pub errors: Vec<String>,
}

impl Summary {
    /// Whether the command that ran it must exit non-zero.
    pub fn has_failures(&self) -> bool {
        self.failed > 0 || !self.errors.is_empty()
    }

    /// Stopped by a signal before the end.
    pub fn interrupted(&self) -> bool {
        !self.unfinished.is_empty()
    }

    /// `compute (2024-02, 2024-03)`: the offering and the months it did not finish.
    pub fn unfinished_text(&self) -> String {
        let months: Vec<String> = self.unfinished.iter().map(Month::to_string).collect();
        format!("{} ({})", self.offering, months.join(", "))
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            f.write_str("dry run, nothing submitted: ")?;
        }
        write!(f, "{}", self.offering)?;
        if let Some((first, last)) = self.range {
            if first == last {
                write!(f, " {first}")?;
            } else {
                write!(f, " {first}..{last}")?;
            }
        }
        let written = if self.dry_run { "to write" } else { "written" };
        write!(
            f,
            ": {} resources × {} months: {} {written}, {} unchanged, {} absent, {} skipped, {} failed; \
             Waldur writes: {} set_usage, {} per-user ({} user values); {} upstream calls, {} Waldur calls, {:.2?}",
            self.resources,
            self.months,
            self.submitted,
            self.unchanged,
            self.absent,
            self.skipped,
            self.failed,
            self.totals_submitted,
            self.user_usage_writes,
            self.user_usages_submitted,
            self.upstream_calls,
            self.waldur_calls,
            self.duration,
        )?;
        if !self.backend.is_empty() {
            write!(f, "; {}", self.backend)?;
        }
        if self.interrupted() {
            let months: Vec<String> = self.unfinished.iter().map(Month::to_string).collect();
            write!(f, "; interrupted: {} not finished", months.join(", "))?;
        }
        Ok(())
    }
}

/// Counts one offering's report cycle in the process metrics.
pub fn record_metrics(summary: &Summary) {
    let metrics = crate::metrics::global();
    let offering = summary.offering.as_str();
    metrics.inc("usage_agent_cycles_total", "Report cycles run, per offering.", &[("offering", offering)]);
    // Added even when zero, so the series exists from the first cycle on.
    let failed = if summary.has_failures() { 1.0 } else { 0.0 };
    metrics.add(
        "usage_agent_cycles_failed_total",
        "Report cycles with at least one failure.",
        &[("offering", offering)],
        failed,
    );
    if !summary.has_failures() {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        metrics.set(
            "usage_agent_last_success_timestamp_seconds",
            "End of the last cycle without failures.",
            &[("offering", offering)],
            now,
        );
    }
    metrics.set(
        "usage_agent_writes_held",
        "What keeps the offering's writes out after its last cycle (a hold on past months, a Waldur that does not answer, a token Waldur refuses for past months); 0 when nothing does.",
        &[("offering", offering)],
        summary.held.len() as f64,
    );
    for (outcome, count) in [
        ("submitted", summary.submitted),
        ("unchanged", summary.unchanged),
        ("absent", summary.absent),
        ("skipped", summary.skipped),
        ("failed", summary.failed),
    ] {
        metrics.add(
            "usage_agent_resources_total",
            "Resource-months handled, by outcome.",
            &[("offering", offering), ("outcome", outcome)],
            count as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_and_writes_are_separate_named_columns() -> anyhow::Result<()> {
        let summary = Summary {
            offering: "compute".into(),
            range: Some((Month::new(2024, 1)?, Month::new(2024, 2)?)),
            months: 2,
            resources: 3,
            submitted: 2,
            unchanged: 4,
            totals_submitted: 2,
            user_usage_writes: 1,
            user_usages_submitted: 5,
            backend: "cscs-dwdi-compute 0.1.0".into(),
            dry_run: true,
            unfinished: vec![Month::new(2024, 2)?],
            ..Summary::default()
        };
        let text = summary.to_string();
        assert!(
            text.starts_with(
                "dry run, nothing submitted: compute 2024-01..2024-02: 3 resources × 2 months: 2 to write, 4 unchanged, 0 absent, 0 skipped, 0 failed; Waldur writes: 2 set_usage, 1 per-user (5 user values);"
            ),
            "{text}"
        );
        assert!(text.ends_with("; cscs-dwdi-compute 0.1.0; interrupted: 2024-02 not finished"), "{text}");
        Ok(())
    }
}
