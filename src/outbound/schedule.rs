//! Retry schedule: what an attempt's outcome means, and when the next attempt runs.
//!
//! Contract
//! - Input: the [`AttemptOutcome`] of one HTTP attempt (built by `delivery::client`), the
//!   time of the delivery's first attempt, the injected current time, the attempt number and
//!   an injected RNG.
//! - Output: a [`Verdict`] from [`classify`]; from [`RetrySchedule::next_attempt_at`] the UTC
//!   instant of the next attempt, or `None` = dead letter (schedule exhausted, horizon reached,
//!   or the verdict does not retry).
//! - Errors: [`ScheduleError`] only when building a schedule from configuration.
//! - Side effects: none (pure; no clock or RNG is read implicitly).
//!
//! The default schedule: attempts start at 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h
//! after the first attempt, then every 12 h (32 h, 44 h, 56 h, 68 h) and a last attempt at
//! the 72 h horizon: 14 attempts. Each delay gets ±20 % jitter (of the gap to the previous
//! scheduled attempt, so early retries stay early), and no attempt is ever scheduled after
//! the horizon.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;

/// After a timeout or a 429 we wait at least this long, whatever the schedule says,
/// because the receiver told us it is overloaded.
pub const OVERLOAD_MIN_DELAY: Duration = Duration::from_secs(60);

/// What happened on one attempt, as far as the retry policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The receiver answered with this status (redirects are never followed).
    Response { status: u16 },
    /// The connect or the total timeout elapsed.
    Timeout,
    /// DNS failure, connection refused or reset before a response.
    Connect,
    /// Any other transport failure (TLS handshake, protocol error, body error).
    Transport,
    /// The destination was refused by the SSRF policy (or HTTP where HTTPS is required);
    /// nothing was sent.
    Refused,
}

/// Why an attempt is retried; stored with the attempt log for operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ServerError,
    RequestTimeout,
    TooManyRequests,
    Timeout,
    Connect,
    Transport,
    /// A 3xx: a failure, because following redirects would bypass the SSRF check.
    Redirect,
    /// Any 4xx other than 408, 410 and 429: the affiliate may fix its endpoint.
    ClientError,
    /// 1xx or a status outside 100..=599.
    Unexpected,
}

/// The retry policy's decision for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: done.
    Delivered,
    /// Try again on the schedule, but not sooner than `min_delay` from now.
    Retry {
        min_delay: Duration,
        reason: RetryReason,
    },
    /// 410 Gone: stop sending to this endpoint until an operator resumes it; the delivery
    /// itself waits (it is not dead-lettered) so a resume can replay it.
    PauseEndpoint,
    /// Retrying cannot help (the destination is refused by policy): dead-letter now.
    GiveUp,
}

/// Maps an attempt outcome to a verdict. Total and pure: every outcome has one answer.
pub fn classify(outcome: AttemptOutcome) -> Verdict {
    let retry = |reason, min_delay| Verdict::Retry { min_delay, reason };
    match outcome {
        AttemptOutcome::Response { status } => match status {
            200..=299 => Verdict::Delivered,
            300..=399 => retry(RetryReason::Redirect, Duration::ZERO),
            408 => retry(RetryReason::RequestTimeout, Duration::ZERO),
            410 => Verdict::PauseEndpoint,
            429 => retry(RetryReason::TooManyRequests, OVERLOAD_MIN_DELAY),
            400..=499 => retry(RetryReason::ClientError, Duration::ZERO),
            500..=599 => retry(RetryReason::ServerError, Duration::ZERO),
            _ => retry(RetryReason::Unexpected, Duration::ZERO),
        },
        AttemptOutcome::Timeout => retry(RetryReason::Timeout, OVERLOAD_MIN_DELAY),
        AttemptOutcome::Connect => retry(RetryReason::Connect, Duration::ZERO),
        AttemptOutcome::Transport => retry(RetryReason::Transport, Duration::ZERO),
        AttemptOutcome::Refused => Verdict::GiveUp,
    }
}

/// Errors building a schedule from configuration.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("retry schedule must start with an attempt at offset 0")]
    FirstOffsetNotZero,
    #[error(
        "retry schedule offsets must strictly increase (offset #{index} is not after the previous one)"
    )]
    NotIncreasing { index: usize },
    #[error("jitter ratio must be within 0.0..1.0, got {0}")]
    BadJitter(f64),
    #[error("scale divisor must be at least 1")]
    BadScale,
}

/// Attempt start offsets from the first attempt, plus jitter. The last offset is the horizon.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    offsets: Vec<Duration>,
    jitter_ratio: f64,
}

impl RetrySchedule {
    /// The production schedule (see the module doc): 14 attempts over 72 h, ±20 % jitter.
    pub fn standard() -> Self {
        const S: u64 = 1;
        const M: u64 = 60;
        const H: u64 = 3600;
        let secs = [
            0,
            5 * S,
            5 * M,
            30 * M,
            2 * H,
            5 * H,
            10 * H,
            14 * H,
            20 * H,
            // "The remainder up to 72 h": every 12 h, then a final attempt at the horizon,
            // so an affiliate that is down for a weekend still gets ~4 tries on Monday.
            32 * H,
            44 * H,
            56 * H,
            68 * H,
            72 * H,
        ];
        Self {
            offsets: secs.iter().map(|s| Duration::from_secs(*s)).collect(),
            jitter_ratio: 0.2,
        }
    }

    /// A schedule from explicit offsets (config or tests). Offsets must start at 0 and
    /// strictly increase; `jitter_ratio` is the ± fraction of each gap.
    pub fn new(offsets: Vec<Duration>, jitter_ratio: f64) -> Result<Self, ScheduleError> {
        if offsets.first() != Some(&Duration::ZERO) {
            return Err(ScheduleError::FirstOffsetNotZero);
        }
        if let Some(index) = (1..offsets.len()).find(|&i| offsets[i] <= offsets[i - 1]) {
            return Err(ScheduleError::NotIncreasing { index });
        }
        if !(0.0..1.0).contains(&jitter_ratio) {
            return Err(ScheduleError::BadJitter(jitter_ratio));
        }
        Ok(Self {
            offsets,
            jitter_ratio,
        })
    }

    /// The same schedule with every offset divided by `divisor` (e.g. 3600: 72 h → 72 s), so
    /// end-to-end tests can walk the whole schedule in real time.
    pub fn scaled_down(&self, divisor: u32) -> Result<Self, ScheduleError> {
        if divisor == 0 {
            return Err(ScheduleError::BadScale);
        }
        let offsets: Vec<Duration> = self.offsets.iter().map(|d| *d / divisor).collect();
        Self::new(offsets, self.jitter_ratio)
    }

    /// Attempt start offsets (first is 0).
    pub fn offsets(&self) -> &[Duration] {
        &self.offsets
    }

    /// Total number of attempts, the first included.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.offsets.len()).unwrap_or(u32::MAX)
    }

    /// The time after the first attempt past which nothing is scheduled (72 h by default).
    pub fn horizon(&self) -> Duration {
        self.offsets.last().copied().unwrap_or_default()
    }

    /// When attempt `attempt_no + 1` should start, given that attempt `attempt_no`
    /// (1-based; 1 = the first attempt) just ended at `now` with `verdict`.
    ///
    /// `retry_after` is the receiver's `Retry-After`, already turned into a delay from `now`
    /// (see [`parse_retry_after`]); it is honoured but clamped to
    /// [scheduled delay, 2 × scheduled delay], so a receiver can slow us down a little but
    /// can neither make us hammer it nor push us past our own schedule.
    ///
    /// Returns `None` for dead letter: the verdict does not retry, the schedule is exhausted,
    /// or `now` is already at or past the horizon.
    pub fn next_attempt_at<R: Rng + ?Sized>(
        &self,
        first_attempt_at: DateTime<Utc>,
        now: DateTime<Utc>,
        attempt_no: u32,
        verdict: Verdict,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> Option<DateTime<Utc>> {
        let Verdict::Retry { min_delay, .. } = verdict else {
            return None;
        };
        // Index of the next attempt in `offsets` (attempt_no is 1-based, offsets 0-based).
        let next = usize::try_from(attempt_no).ok()?;
        if attempt_no == 0 || next >= self.offsets.len() {
            return None;
        }
        let deadline = first_attempt_at + delta(self.horizon());
        if now >= deadline {
            return None;
        }
        let gap = self.offsets[next] - self.offsets[next - 1];
        let jitter_span = delta(gap).as_seconds_f64() * self.jitter_ratio;
        let jitter = if jitter_span > 0.0 {
            rng.random_range(-jitter_span..=jitter_span)
        } else {
            0.0
        };
        let scheduled = first_attempt_at
            + delta(self.offsets[next])
            + TimeDelta::milliseconds((jitter * 1000.0) as i64);
        // A late worker runs the attempt now rather than in the past.
        let scheduled_delay = (scheduled - now).max(TimeDelta::zero());
        let mut delay = scheduled_delay;
        if let Some(ra) = retry_after {
            delay = delta(ra).clamp(scheduled_delay, scheduled_delay * 2);
        }
        delay = delay.max(delta(min_delay));
        Some((now + delay).min(deadline))
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::standard()
    }
}

/// What the worker does after an attempt: the verdict and the schedule combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    /// Push the next attempt's job to run at this time.
    RetryAt(DateTime<Utc>),
    /// Mark the endpoint paused (410); the delivery waits for a resume.
    PauseEndpoint,
    /// Keep the delivery, mark it dead, make it replayable.
    DeadLetter(DeadLetterReason),
}

/// Why a delivery was dead-lettered (stored for operators).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Every attempt of the schedule failed, or the horizon passed.
    ScheduleExhausted,
    /// The destination was refused by policy; retrying cannot help.
    Refused,
}

impl RetrySchedule {
    /// Classifies `outcome` and plans the next step for attempt `attempt_no` that ended at
    /// `now` (see [`RetrySchedule::next_attempt_at`] for the timing rules).
    pub fn plan<R: Rng + ?Sized>(
        &self,
        first_attempt_at: DateTime<Utc>,
        now: DateTime<Utc>,
        attempt_no: u32,
        outcome: AttemptOutcome,
        retry_after: Option<Duration>,
        rng: &mut R,
    ) -> NextStep {
        match classify(outcome) {
            Verdict::Delivered => NextStep::Delivered,
            Verdict::PauseEndpoint => NextStep::PauseEndpoint,
            Verdict::GiveUp => NextStep::DeadLetter(DeadLetterReason::Refused),
            v @ Verdict::Retry { .. } => {
                match self.next_attempt_at(first_attempt_at, now, attempt_no, v, retry_after, rng) {
                    Some(at) => NextStep::RetryAt(at),
                    None => NextStep::DeadLetter(DeadLetterReason::ScheduleExhausted),
                }
            }
        }
    }
}

/// Parses a `Retry-After` header value: delay-seconds or an HTTP-date, as a delay from `now`.
/// A date in the past is a zero delay; anything unparseable is ignored (`None`).
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at: DateTime<Utc> = httpdate::parse_http_date(value).ok()?.into();
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

/// Saturating conversion: our durations are at most days, far below TimeDelta's range.
fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .unwrap_or_default()
    }

    fn retry() -> Verdict {
        classify(AttemptOutcome::Response { status: 503 })
    }

    /// A schedule without jitter so offsets can be asserted exactly.
    fn exact() -> RetrySchedule {
        RetrySchedule::new(RetrySchedule::standard().offsets().to_vec(), 0.0).unwrap_or_default()
    }

    #[test]
    fn classifier_table_matches_the_issue() {
        let cases: &[(AttemptOutcome, Verdict)] = &[
            (AttemptOutcome::Response { status: 200 }, Verdict::Delivered),
            (AttemptOutcome::Response { status: 204 }, Verdict::Delivered),
            (AttemptOutcome::Response { status: 299 }, Verdict::Delivered),
            (
                AttemptOutcome::Response { status: 302 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::Redirect,
                },
            ),
            (
                AttemptOutcome::Response { status: 301 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::Redirect,
                },
            ),
            (
                AttemptOutcome::Response { status: 408 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::RequestTimeout,
                },
            ),
            (
                AttemptOutcome::Response { status: 410 },
                Verdict::PauseEndpoint,
            ),
            (
                AttemptOutcome::Response { status: 429 },
                Verdict::Retry {
                    min_delay: OVERLOAD_MIN_DELAY,
                    reason: RetryReason::TooManyRequests,
                },
            ),
            (
                AttemptOutcome::Response { status: 400 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::ClientError,
                },
            ),
            (
                AttemptOutcome::Response { status: 404 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::ClientError,
                },
            ),
            (
                AttemptOutcome::Response { status: 500 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::ServerError,
                },
            ),
            (
                AttemptOutcome::Response { status: 599 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::ServerError,
                },
            ),
            (
                AttemptOutcome::Response { status: 101 },
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::Unexpected,
                },
            ),
            (
                AttemptOutcome::Timeout,
                Verdict::Retry {
                    min_delay: OVERLOAD_MIN_DELAY,
                    reason: RetryReason::Timeout,
                },
            ),
            (
                AttemptOutcome::Connect,
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::Connect,
                },
            ),
            (
                AttemptOutcome::Transport,
                Verdict::Retry {
                    min_delay: Duration::ZERO,
                    reason: RetryReason::Transport,
                },
            ),
            (AttemptOutcome::Refused, Verdict::GiveUp),
        ];
        for (outcome, verdict) in cases {
            assert_eq!(classify(*outcome), *verdict, "{outcome:?}");
        }
    }

    #[test]
    fn standard_schedule_has_the_documented_offsets_and_ends_at_72_hours() {
        let s = RetrySchedule::standard();
        let hours: Vec<u64> = s.offsets().iter().map(|d| d.as_secs()).collect();
        assert_eq!(
            hours,
            vec![
                0, 5, 300, 1800, 7200, 18_000, 36_000, 50_400, 72_000, 115_200, 158_400, 201_600,
                244_800, 259_200
            ]
        );
        assert_eq!(s.max_attempts(), 14);
        assert_eq!(s.horizon(), Duration::from_secs(72 * 3600));
    }

    #[test]
    fn without_jitter_each_retry_starts_at_its_offset_from_the_first_attempt() {
        let s = exact();
        let mut rng = StdRng::seed_from_u64(1);
        for attempt_no in 1..s.max_attempts() {
            // The attempt ended right at its own scheduled start (fast failure).
            let now = t0() + delta(s.offsets()[attempt_no as usize - 1]);
            let next = s.next_attempt_at(t0(), now, attempt_no, retry(), None, &mut rng);
            assert_eq!(
                next,
                Some(t0() + delta(s.offsets()[attempt_no as usize])),
                "{attempt_no}"
            );
        }
    }

    #[test]
    fn after_the_last_attempt_the_delivery_is_dead_lettered() {
        let s = RetrySchedule::standard();
        let mut rng = StdRng::seed_from_u64(1);
        let now = t0() + TimeDelta::hours(71);
        assert_eq!(
            s.next_attempt_at(t0(), now, s.max_attempts(), retry(), None, &mut rng),
            None
        );
        assert_eq!(
            s.next_attempt_at(t0(), now, 99, retry(), None, &mut rng),
            None
        );
    }

    #[test]
    fn an_attempt_that_ends_after_the_horizon_is_dead_lettered() {
        let s = RetrySchedule::standard();
        let mut rng = StdRng::seed_from_u64(1);
        let now = t0() + TimeDelta::hours(72);
        assert_eq!(
            s.next_attempt_at(t0(), now, 3, retry(), None, &mut rng),
            None
        );
    }

    #[test]
    fn delivered_paused_and_given_up_verdicts_schedule_nothing() {
        let s = RetrySchedule::standard();
        let mut rng = StdRng::seed_from_u64(1);
        for v in [Verdict::Delivered, Verdict::PauseEndpoint, Verdict::GiveUp] {
            assert_eq!(s.next_attempt_at(t0(), t0(), 1, v, None, &mut rng), None);
        }
    }

    #[test]
    fn jitter_stays_within_twenty_percent_of_the_gap_and_never_passes_72_hours() {
        let s = RetrySchedule::standard();
        let deadline = t0() + TimeDelta::hours(72);
        for seed in 0..2000u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            for attempt_no in 1..s.max_attempts() {
                let i = attempt_no as usize;
                let now = t0() + delta(s.offsets()[i - 1]);
                let Some(next) = s.next_attempt_at(t0(), now, attempt_no, retry(), None, &mut rng)
                else {
                    panic!("seed {seed} attempt {attempt_no}: unexpected dead letter");
                };
                let base = t0() + delta(s.offsets()[i]);
                let gap = delta(s.offsets()[i] - s.offsets()[i - 1]);
                let span = TimeDelta::milliseconds((gap.num_milliseconds() as f64 * 0.2) as i64);
                assert!(
                    next >= base - span - TimeDelta::milliseconds(1),
                    "seed {seed} #{i} early"
                );
                assert!(
                    next <= base + span + TimeDelta::milliseconds(1),
                    "seed {seed} #{i} late"
                );
                assert!(next <= deadline, "seed {seed} #{i} past the horizon");
                assert!(next >= now, "seed {seed} #{i} in the past");
            }
        }
    }

    #[test]
    fn jitter_actually_varies_between_seeds() {
        let s = RetrySchedule::standard();
        let now = t0() + TimeDelta::minutes(30);
        let distinct: std::collections::BTreeSet<_> = (0..50u64)
            .filter_map(|seed| {
                let mut rng = StdRng::seed_from_u64(seed);
                s.next_attempt_at(t0(), now, 4, retry(), None, &mut rng)
            })
            .collect();
        assert!(
            distinct.len() > 40,
            "only {} distinct times",
            distinct.len()
        );
    }

    #[test]
    fn the_final_attempt_is_capped_at_the_horizon_even_with_positive_jitter() {
        let s = RetrySchedule::standard();
        let deadline = t0() + TimeDelta::hours(72);
        let now = t0() + TimeDelta::hours(68);
        let last = s.max_attempts() - 1;
        let mut hit_cap = false;
        for seed in 0..500u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let next = s.next_attempt_at(t0(), now, last, retry(), None, &mut rng);
            assert!(next.is_some_and(|n| n <= deadline));
            hit_cap |= next == Some(deadline);
        }
        assert!(
            hit_cap,
            "positive jitter on the last gap must be clamped to the horizon"
        );
    }

    #[test]
    fn timeouts_and_429_wait_at_least_a_minute_even_for_the_5_second_retry() {
        let s = exact();
        let mut rng = StdRng::seed_from_u64(3);
        for outcome in [
            AttemptOutcome::Timeout,
            AttemptOutcome::Response { status: 429 },
        ] {
            let next = s.next_attempt_at(t0(), t0(), 1, classify(outcome), None, &mut rng);
            assert_eq!(next, Some(t0() + TimeDelta::seconds(60)), "{outcome:?}");
        }
    }

    #[test]
    fn retry_after_is_clamped_between_the_scheduled_delay_and_twice_it() {
        let s = exact();
        let mut rng = StdRng::seed_from_u64(3);
        // Attempt 3 ended at 5 min; the schedule says attempt 4 at 30 min: delay 25 min.
        let now = t0() + TimeDelta::minutes(5);
        let at = |ra: u64, rng: &mut StdRng| {
            s.next_attempt_at(t0(), now, 3, retry(), Some(Duration::from_secs(ra)), rng)
        };
        // Shorter than scheduled: the schedule wins.
        assert_eq!(at(10, &mut rng), Some(t0() + TimeDelta::minutes(30)));
        // Within the window: honoured.
        assert_eq!(at(40 * 60, &mut rng), Some(now + TimeDelta::minutes(40)));
        // Longer than twice the scheduled delay: clamped to 2 × 25 min.
        assert_eq!(at(10 * 3600, &mut rng), Some(now + TimeDelta::minutes(50)));
    }

    #[test]
    fn retry_after_cannot_push_an_attempt_past_the_horizon() {
        let s = exact();
        let mut rng = StdRng::seed_from_u64(3);
        let now = t0() + TimeDelta::hours(68);
        let next = s.next_attempt_at(
            t0(),
            now,
            s.max_attempts() - 1,
            retry(),
            Some(Duration::from_secs(86_400)),
            &mut rng,
        );
        assert_eq!(next, Some(t0() + TimeDelta::hours(72)));
    }

    #[test]
    fn a_late_attempt_is_rescheduled_no_earlier_than_now() {
        let s = exact();
        let mut rng = StdRng::seed_from_u64(3);
        // Attempt 2 was due at 5 s but the worker only ran it (and it failed) at 40 min.
        let now = t0() + TimeDelta::minutes(40);
        assert_eq!(
            s.next_attempt_at(t0(), now, 2, retry(), None, &mut rng),
            Some(now)
        );
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = t0();
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 7 ", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 2026 00:02:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn schedules_from_config_are_validated() {
        let d = Duration::from_secs;
        assert_eq!(
            RetrySchedule::new(vec![d(1)], 0.2),
            Err(ScheduleError::FirstOffsetNotZero)
        );
        assert_eq!(
            RetrySchedule::new(vec![d(0), d(5), d(5)], 0.2),
            Err(ScheduleError::NotIncreasing { index: 2 })
        );
        assert_eq!(
            RetrySchedule::new(vec![d(0)], 1.5),
            Err(ScheduleError::BadJitter(1.5))
        );
        assert_eq!(
            RetrySchedule::standard().scaled_down(0),
            Err(ScheduleError::BadScale)
        );
    }

    #[test]
    fn a_scaled_down_schedule_keeps_its_shape() {
        let s = RetrySchedule::standard()
            .scaled_down(3600)
            .unwrap_or_default();
        assert_eq!(s.horizon(), Duration::from_secs(72));
        assert_eq!(s.max_attempts(), 14);
        assert_eq!(s.offsets()[8], Duration::from_secs(20));
    }

    #[test]
    fn plan_walks_a_failing_delivery_to_the_dead_letter_after_14_attempts() {
        let s = RetrySchedule::standard();
        let mut rng = StdRng::seed_from_u64(9);
        let mut now = t0();
        let mut attempts = 1;
        loop {
            match s.plan(
                t0(),
                now,
                attempts,
                AttemptOutcome::Response { status: 500 },
                None,
                &mut rng,
            ) {
                NextStep::RetryAt(at) => {
                    assert!(at >= now && at <= t0() + TimeDelta::hours(72));
                    now = at;
                    attempts += 1;
                }
                NextStep::DeadLetter(r) => {
                    assert_eq!(r, DeadLetterReason::ScheduleExhausted);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(attempts, 14);
    }

    #[test]
    fn plan_maps_success_gone_and_refused_directly() {
        let s = RetrySchedule::standard();
        let mut rng = StdRng::seed_from_u64(9);
        let mut plan = |o| s.plan(t0(), t0(), 1, o, None, &mut rng);
        assert_eq!(
            plan(AttemptOutcome::Response { status: 201 }),
            NextStep::Delivered
        );
        assert_eq!(
            plan(AttemptOutcome::Response { status: 410 }),
            NextStep::PauseEndpoint
        );
        assert_eq!(
            plan(AttemptOutcome::Refused),
            NextStep::DeadLetter(DeadLetterReason::Refused)
        );
    }
}
