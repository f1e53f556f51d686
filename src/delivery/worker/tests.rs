//! The worker's decision path under a hand-moved clock: real `attempt` (load, render, plan,
//! one transaction) on a fresh SQLite database, with the HTTP send replaced by a scripted
//! affiliate. apalis itself is not driven here: it picks due jobs by `SystemTime::now()` and
//! stamps locks, acks and heartbeats with SQLite's `strftime('%s', 'now')`, and no injected
//! clock reaches either. The test plays its part instead: it takes the job apalis would run
//! next from `Jobs`, moves the clock to that job's `run_at` and calls the handler's
//! `attempt`. Nothing sleeps; 72 hours pass in milliseconds. SQLite only (the `Jobs` queries
//! are apalis-sqlite's table).

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::TimeDelta;
use sqlx::SqlitePool;

use super::*;
use crate::delivery::AttemptRecord;
use crate::outbound::{AffiliatePostbacks, AttemptOutcome, NewDelivery, PostbackRule, SigningKeys};

/// The standard schedule as the issue states it: 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h,
/// 14 h, 20 h, then the remainder to 72 h (32, 44, 56, 68, 72 h). Written out, not read
/// from `RetrySchedule::standard()`, so a change there fails here.
const STANDARD_SECS: [i64; 14] = [
    0, 5, 300, 1_800, 7_200, 18_000, 36_000, 50_400, 72_000, 115_200, 158_400, 201_600, 244_800,
    259_200,
];
const HORIZON: TimeDelta = TimeDelta::hours(72);
const ENDPOINT: &str = "aff:down";
const TOTAL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the scripted affiliate takes to answer with a status.
const ANSWER_LATENCY: TimeDelta = TimeDelta::milliseconds(40);

/// Far from the real date, so a stray `Utc::now()` in the path shows up as a wild offset.
fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2030, 3, 1, 0, 0, 0)
        .single()
        .expect("valid date")
}

/// A clock that moves only when the test moves it.
struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().expect("clock") = at;
    }
    fn advance(&self, by: TimeDelta) {
        *self.0.lock().expect("clock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock")
    }
}

/// What the scripted affiliate does with one attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfterSecs(u16, i64),
    /// This status with `Retry-After: <HTTP date this many seconds from now>`.
    RetryAfterDate(u16, i64),
    /// Holds the request until the client's total timeout fires.
    Hang,
    /// Nothing listens: connection refused.
    Refuse,
}

impl Reply {
    fn status(self) -> Option<u16> {
        match self {
            Reply::Status(s) | Reply::RetryAfterSecs(s, _) | Reply::RetryAfterDate(s, _) => Some(s),
            Reply::Hang | Reply::Refuse => None,
        }
    }

    /// The receiver said it is overloaded: the next attempt waits at least a minute.
    fn is_overload(self) -> bool {
        self == Reply::Hang || self.status() == Some(429)
    }
}

/// One request the scripted affiliate received.
struct Sent {
    at: DateTime<Utc>,
    webhook_timestamp: Option<String>,
}

/// A delivery created by the test, and its schedule's origin.
struct Delivery {
    id: String,
    origin: DateTime<Utc>,
}

/// What one attempt left in the database, plus the clock around it.
#[derive(Debug)]
struct Seen {
    no: u32,
    reply: Reply,
    started: DateTime<Utc>,
    ended: DateTime<Utc>,
    outcome: String,
    http_status: Option<i64>,
    latency_ms: i64,
    state: String,
    next_attempt_at: Option<DateTime<Utc>>,
    /// `run_at` of the job of the next attempt, if one was queued.
    next_run_at: Option<DateTime<Utc>>,
}

struct Rig {
    _dir: tempfile::TempDir,
    pool: SqlitePool,
    ctx: DeliveryContext,
    clock: Arc<ManualClock>,
    sent: Mutex<Vec<Sent>>,
}

fn ms(at: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(at).single().expect("valid time")
}

impl Rig {
    /// A fresh, migrated database and a worker context for one signed POST endpoint
    /// with the standard schedule and production timeouts.
    async fn new() -> Self {
        Self::build(false).await
    }

    /// Like [`Rig::new`], with outcomes committed by a group-commit writer on the database's
    /// write connection, as the gateway runs on SQLite.
    async fn with_writer() -> Self {
        Self::build(true).await
    }

    async fn build(with_writer: bool) -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("postgate.db").display());
        let opened = crate::store::open(&url, 1).await.expect("database");
        let writer = with_writer.then(|| crate::store::writer::spawn(opened.writer, 64, None).0);
        let pool = crate::store::delivery_pool(&url, 4)
            .await
            .expect("delivery pool");
        let endpoint = Endpoint::post(
            ENDPOINT,
            "https://down.example/hooks",
            None,
            Some(SigningKeys::parse(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).expect("key")),
            false,
        )
        .expect("endpoint");
        let settings = OutboundSettings {
            postbacks: HashMap::from([(
                "down".to_owned(),
                AffiliatePostbacks {
                    global: Some(PostbackRule {
                        endpoint,
                        goals: None,
                        statuses: None,
                    }),
                    offer_overrides: HashMap::new(),
                },
            )]),
            allow_networks: Vec::new(),
            schedule: RetrySchedule::standard(),
            concurrency: 4,
            per_endpoint_concurrency: 8,
            connect_timeout: Duration::from_secs(5),
            total_timeout: TOTAL_TIMEOUT,
            poll_interval: Duration::from_millis(200),
            worker: true,
            handoff_grace: None,
        };
        let clock = Arc::new(ManualClock(Mutex::new(t0())));
        let ctx = DeliveryContext::new(pool.clone(), &settings, writer)
            .expect("context")
            .with_clock(clock.clone());
        let Db::Sqlite(pool) = pool else {
            unreachable!("a sqlite: URL opens SQLite")
        };
        Self {
            _dir: dir,
            pool,
            ctx,
            clock,
            sent: Mutex::new(Vec::new()),
        }
    }

    /// A conversion recorded now (on a whole second) and its delivery to [`ENDPOINT`],
    /// queued the way the writer queues it: first attempt due at once.
    async fn new_delivery(&self) -> Delivery {
        let origin = ceil_to_second(self.clock.now());
        self.clock.set(origin);
        let conversion = uuid::Uuid::now_v7().to_string();
        sqlx::query(
            "INSERT INTO conversions (id, created_at, updated_at, source, status, decision,
                goal, transaction_id, payout_minor, network_currency)
             VALUES ($1, $2, $2, 'postback', 'approved', 'accepted', 'purchase', 'T1', 1500,
                'USD')",
        )
        .bind(&conversion)
        .bind(origin.timestamp_millis())
        .execute(&self.pool)
        .await
        .expect("conversion");
        let delivery = NewDelivery::new(&conversion, ENDPOINT, None, None, "approved");
        let mut conn = self.pool.acquire().await.expect("connection");
        enqueue::insert(
            &mut Conn::from(&mut *conn),
            std::slice::from_ref(&delivery),
            origin.timestamp_millis(),
        )
        .await
        .expect("delivery");
        Delivery {
            id: delivery.id,
            origin,
        }
    }

    /// The scripted affiliate: records the request, lets the attempt's time pass on the
    /// clock, and answers as the client would have recorded it.
    fn answer(&self, req: &OutboundRequest, reply: Reply) -> AttemptRecord {
        let at = self.clock.now();
        let webhook_timestamp = req
            .headers
            .iter()
            .find(|(k, _)| k == "webhook-timestamp")
            .map(|(_, v)| v.clone());
        self.sent.lock().expect("sent").push(Sent {
            at,
            webhook_timestamp,
        });
        let total = TimeDelta::from_std(TOTAL_TIMEOUT).expect("timeout");
        let (outcome, took, retry_after, error) = match reply {
            Reply::Status(s) => (
                AttemptOutcome::Response { status: s },
                ANSWER_LATENCY,
                None,
                None,
            ),
            Reply::RetryAfterSecs(s, secs) => (
                AttemptOutcome::Response { status: s },
                ANSWER_LATENCY,
                Some(secs.to_string()),
                None,
            ),
            Reply::RetryAfterDate(s, secs) => {
                let date = at + ANSWER_LATENCY + TimeDelta::seconds(secs);
                (
                    AttemptOutcome::Response { status: s },
                    ANSWER_LATENCY,
                    Some(httpdate::fmt_http_date(date.into())),
                    None,
                )
            }
            Reply::Hang => (
                AttemptOutcome::Timeout,
                total,
                None,
                Some("error sending request: operation timed out".to_owned()),
            ),
            Reply::Refuse => (
                AttemptOutcome::Connect,
                TimeDelta::zero(),
                None,
                Some("error sending request: tcp connect error: Connection refused".to_owned()),
            ),
        };
        self.clock.advance(took);
        AttemptRecord {
            endpoint_id: req.endpoint_id.clone(),
            url: crate::delivery::redact_url(&req.url),
            outcome,
            status: reply.status(),
            latency: took.to_std().expect("latency"),
            error,
            retry_after,
            body_prefix: Vec::new(),
            body_truncated: false,
        }
    }

    /// The queued job of attempt `no` of `delivery` and its `run_at`.
    async fn job(&self, delivery: &str, no: u32) -> Option<(DeliveryJob, DateTime<Utc>)> {
        let row: Option<(Vec<u8>, i64)> = sqlx::query_as(
            "SELECT job, run_at FROM Jobs WHERE job_type = $1 AND idempotency_key = $2",
        )
        .bind(QUEUE)
        .bind(format!("{delivery}:1:{no}"))
        .fetch_optional(&self.pool)
        .await
        .expect("job");
        row.map(|(job, run_at)| {
            (
                serde_json::from_slice(&job).expect("job JSON"),
                ms(run_at * 1000),
            )
        })
    }

    /// Does what apalis does when attempt `no` comes due: moves the clock to the job's
    /// `run_at` and runs the handler's `attempt` on it, sending through the scripted
    /// affiliate. False when no such job is queued.
    async fn step(&self, delivery: &str, no: u32, reply: Reply) -> bool {
        let Some((job, run_at)) = self.job(delivery, no).await else {
            return false;
        };
        // Time only moves forward: a job that is already due runs now (late).
        self.clock.set(run_at.max(self.clock.now()));
        let send = async |req: &OutboundRequest| self.answer(req, reply);
        attempt(&job, &self.ctx, Origin::Queue, send)
            .await
            .expect("attempt");
        true
    }

    /// Runs `delivery` through every attempt the worker schedules, answering attempt n
    /// with `script[n - 1]` (the last entry repeats), and returns what each left behind.
    async fn walk(&self, delivery: &Delivery, script: &[Reply]) -> Vec<Seen> {
        let delivery = delivery.id.as_str();
        let mut seen = Vec::new();
        for no in 1.. {
            assert!(no <= 20, "more attempts than any schedule has");
            let reply = script[(no as usize - 1).min(script.len() - 1)];
            if !self.step(delivery, no, reply).await {
                break;
            }
            let ended = self.clock.now();
            let (started, outcome, http_status, latency_ms): (i64, String, Option<i64>, i64) =
                sqlx::query_as(
                    "SELECT started_at, outcome, http_status, latency_ms FROM delivery_attempts
                     WHERE delivery_id = $1 AND series = 1 AND attempt_no = $2",
                )
                .bind(delivery)
                .bind(i64::from(no))
                .fetch_one(&self.pool)
                .await
                .expect("attempt row");
            let (state, next): (String, Option<i64>) =
                sqlx::query_as("SELECT state, next_attempt_at FROM deliveries WHERE id = $1")
                    .bind(delivery)
                    .fetch_one(&self.pool)
                    .await
                    .expect("delivery");
            seen.push(Seen {
                no,
                reply,
                started: ms(started),
                ended,
                outcome,
                http_status,
                latency_ms,
                state,
                next_attempt_at: next.map(ms),
                next_run_at: self.job(delivery, no + 1).await.map(|(_, at)| at),
            });
        }
        seen
    }

    async fn delivery(&self, id: &str) -> (String, i64, Option<String>) {
        sqlx::query_as("SELECT state, attempts, last_error FROM deliveries WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .expect("delivery")
    }
}

/// The standard schedule's window for attempt `index` (0-based) of a delivery whose
/// schedule starts at `origin`: its offset ± 20 % of the gap before it, never past 72 h.
fn window(origin: DateTime<Utc>, index: usize) -> (DateTime<Utc>, DateTime<Utc>) {
    let offset = TimeDelta::seconds(STANDARD_SECS[index]);
    let gap = TimeDelta::seconds(STANDARD_SECS[index] - STANDARD_SECS[index - 1]);
    // Jitter is drawn in seconds and truncated to milliseconds: one millisecond of slack.
    let span = gap / 5 + TimeDelta::milliseconds(1);
    (
        origin + offset - span,
        (origin + offset + span).min(origin + HORIZON),
    )
}

/// apalis keeps `run_at` in whole seconds; the worker rounds up.
fn ceil_to_second(at: DateTime<Utc>) -> DateTime<Utc> {
    ms((at.timestamp_millis() + 999).div_euclid(1000) * 1000)
}

/// What holds for every life, whatever the script: each retry's job runs when the
/// delivery says, time only moves forward, an overloaded receiver gets a minute's rest,
/// nothing starts after 72 h, and the attempt row is the attempt as it happened.
fn assert_consistent(rig: &Rig, delivery: &Delivery, seen: &[Seen]) {
    assert_eq!(seen.first().map(|s| s.started), Some(delivery.origin));
    for (i, s) in seen.iter().enumerate() {
        assert_eq!(s.no as usize, i + 1);
        assert!(
            s.started <= delivery.origin + HORIZON,
            "#{} starts after 72 h",
            s.no
        );
        assert_eq!(
            s.latency_ms,
            (s.ended - s.started).num_milliseconds(),
            "#{}",
            s.no
        );
        assert_eq!(s.http_status, s.reply.status().map(i64::from), "#{}", s.no);
        match s.next_attempt_at {
            Some(next) => {
                assert_eq!(s.state, "pending", "#{}", s.no);
                assert_eq!(s.outcome, "retry", "#{}", s.no);
                assert!(next >= s.ended, "#{} retries in the past", s.no);
                assert_eq!(s.next_run_at, Some(ceil_to_second(next)), "#{}", s.no);
                let following = seen.get(i + 1).expect("the queued attempt runs");
                assert_eq!(following.started, ceil_to_second(next));
                if s.reply.is_overload() {
                    assert!(
                        following.started - s.ended >= TimeDelta::seconds(60),
                        "#{} after {:?} waited only {}",
                        s.no,
                        s.reply,
                        following.started - s.ended
                    );
                }
            }
            None => {
                assert_eq!(
                    s.next_run_at, None,
                    "#{}: a job without a next_attempt_at",
                    s.no
                );
                assert_eq!(i + 1, seen.len(), "#{} ended the delivery", s.no);
            }
        }
    }
    let sent = rig.sent.lock().expect("sent");
    for s in seen {
        let request = sent
            .iter()
            .find(|r| r.at == s.started)
            .expect("a request per attempt");
        assert_eq!(
            request.webhook_timestamp,
            Some(s.started.timestamp().to_string()),
            "#{}: the signature is stamped with the attempt's start",
            s.no
        );
    }
}

/// After the last scheduled attempt the delivery is a dead letter: 14 attempts, no job.
async fn assert_dead_letter(rig: &Rig, delivery: &Delivery, seen: &[Seen]) {
    let delivery = delivery.id.as_str();
    assert_eq!(seen.len(), 14, "{seen:#?}");
    let last = seen.last().expect("attempts");
    assert_eq!(last.outcome, "dead");
    assert_eq!(last.state, "dead");
    assert_eq!(last.next_attempt_at, None);
    assert!(rig.job(delivery, 15).await.is_none());
    let (state, attempts, _) = rig.delivery(delivery).await;
    assert_eq!((state.as_str(), attempts), ("dead", 14));
}

#[tokio::test]
async fn an_always_failing_endpoint_is_tried_on_the_standard_schedule_for_72_hours_then_dead_lettered()
 {
    use Reply::*;
    let rig = Rig::new().await;
    // Every failure kind, placed where the one-minute floor cannot move the schedule.
    let script = [
        Status(500),
        Hang,
        Refuse,
        Status(429),
        Status(404),
        Status(503),
        RetryAfterSecs(429, 1),
        Hang,
        Status(400),
        Status(502),
        Refuse,
        Status(408),
        Status(301),
        Status(500),
    ];
    let mut off_the_exact_offset = 0;
    for _ in 0..5 {
        let delivery = rig.new_delivery().await;
        let seen = rig.walk(&delivery, &script).await;
        assert_consistent(&rig, &delivery, &seen);
        assert_dead_letter(&rig, &delivery, &seen).await;
        for (i, s) in seen.iter().enumerate().skip(1) {
            let (early, late) = window(delivery.origin, i);
            let planned = seen[i - 1].next_attempt_at.expect("retry");
            assert!(
                early <= planned && planned <= late,
                "attempt {} planned at +{}s, outside {}s ± 20 % of the gap",
                s.no,
                (planned - delivery.origin).num_milliseconds() as f64 / 1000.0,
                STANDARD_SECS[i]
            );
            off_the_exact_offset +=
                usize::from(planned != delivery.origin + TimeDelta::seconds(STANDARD_SECS[i]));
        }
        let (_, _, last_error) = rig.delivery(&delivery.id).await;
        assert_eq!(last_error.as_deref(), Some("HTTP 500"));
    }
    assert!(off_the_exact_offset > 40, "jitter is not applied");
}

#[tokio::test]
async fn after_a_timeout_or_a_429_the_next_attempt_waits_at_least_a_minute() {
    let rig = Rig::new().await;
    for reply in [Reply::Hang, Reply::Status(429)] {
        // The receiver is overloaded for all 72 hours.
        let delivery = rig.new_delivery().await;
        let seen = rig.walk(&delivery, &[reply]).await;
        assert_consistent(&rig, &delivery, &seen);
        assert_dead_letter(&rig, &delivery, &seen).await;
        // The schedule says 5 s (± 1 s); the floor says a minute after the attempt ended.
        assert_eq!(
            seen[0].next_attempt_at,
            Some(seen[0].ended + TimeDelta::seconds(60)),
            "{reply:?}"
        );
        if reply == Reply::Hang {
            assert_eq!(
                seen[1].started,
                delivery.origin + TimeDelta::seconds(15 + 60)
            );
        }
        // From the third attempt on the gaps are longer than a minute: the schedule rules.
        for (i, s) in seen.iter().enumerate().skip(2) {
            let (early, late) = window(delivery.origin, i);
            assert!(
                early <= s.started && s.started <= late + TimeDelta::seconds(1),
                "#{}",
                s.no
            );
        }
    }
}

#[tokio::test]
async fn retry_after_is_clamped_between_the_scheduled_delay_and_twice_it() {
    use Reply::*;
    let rig = Rig::new().await;
    // Attempt 3 (at ~5 min) answers with a Retry-After; attempt 4 is scheduled at
    // 30 min ± 6 min, so the scheduled delay is 19–31 min.
    let life = async |third: Reply| {
        let delivery = rig.new_delivery().await;
        let seen = rig
            .walk(&delivery, &[Status(500), Status(500), third, Status(500)])
            .await;
        assert_consistent(&rig, &delivery, &seen);
        assert_dead_letter(&rig, &delivery, &seen).await;
        let third = &seen[2];
        let (early, late) = window(delivery.origin, 3);
        (
            third.ended,
            third.next_attempt_at.expect("retry"),
            early,
            late,
        )
    };

    // Shorter than scheduled: the schedule wins.
    let (_, next, early, late) = life(RetryAfterSecs(503, 10)).await;
    assert!(early <= next && next <= late, "{next}");

    // Inside [scheduled, 2 × scheduled]: honoured exactly, as seconds or as an HTTP date
    // (read against the injected clock), after a 503 or a 429.
    for reply in [
        RetryAfterSecs(503, 2000),
        RetryAfterDate(503, 2000),
        RetryAfterSecs(429, 2000),
    ] {
        let (ended, next, _, _) = life(reply).await;
        let asked = ended + TimeDelta::seconds(2000);
        let asked = match reply {
            // An HTTP date names a whole second.
            RetryAfterDate(..) => ms(asked.timestamp() * 1000),
            _ => asked,
        };
        assert_eq!(next, asked, "{reply:?}");
    }

    // Longer than twice the scheduled delay: exactly twice it, so the attempt it implies
    // sits inside attempt 4's jitter window.
    let (ended, next, early, late) = life(RetryAfterSecs(503, 10 * 3600)).await;
    let waited = next - ended;
    assert!(waited < TimeDelta::hours(10), "{waited}");
    let scheduled = ended + waited / 2;
    assert!(
        early <= scheduled && scheduled <= late,
        "{waited} is not twice a scheduled delay"
    );

    // Near the end a Retry-After cannot push the last attempt past 72 h.
    let delivery = rig.new_delivery().await;
    let mut script = vec![Status(500); 12];
    script.extend([RetryAfterSecs(503, 86_400), Status(500)]);
    let seen = rig.walk(&delivery, &script).await;
    assert_consistent(&rig, &delivery, &seen);
    assert_dead_letter(&rig, &delivery, &seen).await;
    assert_eq!(seen[12].next_attempt_at, Some(delivery.origin + HORIZON));
    assert_eq!(seen[13].started, delivery.origin + HORIZON);
}

#[tokio::test]
async fn a_2xx_delivers_and_nothing_more_is_scheduled() {
    let rig = Rig::new().await;
    let delivery = rig.new_delivery().await;
    let seen = rig
        .walk(
            &delivery,
            &[Reply::Status(500), Reply::Hang, Reply::Status(204)],
        )
        .await;
    assert_consistent(&rig, &delivery, &seen);
    assert_eq!(seen.len(), 3);
    assert_eq!(
        (seen[2].outcome.as_str(), seen[2].state.as_str()),
        ("delivered", "delivered")
    );
    assert!(rig.job(&delivery.id, 4).await.is_none());
    assert_eq!(
        rig.delivery(&delivery.id).await,
        ("delivered".to_owned(), 3, None)
    );
}

#[tokio::test]
async fn a_410_pauses_the_endpoint_and_a_due_attempt_of_another_delivery_is_not_sent() {
    let rig = Rig::new().await;
    let gone = rig.new_delivery().await;
    let waiting = rig.new_delivery().await;
    let seen = rig
        .walk(&gone, &[Reply::Status(500), Reply::Status(410)])
        .await;
    assert_consistent(&rig, &gone, &seen);
    assert_eq!(seen.len(), 2);
    assert_eq!(
        (seen[1].outcome.as_str(), seen[1].state.as_str()),
        ("paused", "paused")
    );
    assert!(rig.job(&gone.id, 3).await.is_none());
    let paused_at: i64 =
        sqlx::query_scalar("SELECT paused_at FROM paused_endpoints WHERE endpoint = $1")
            .bind(ENDPOINT)
            .fetch_one(&rig.pool)
            .await
            .expect("paused endpoint");
    assert_eq!(ms(paused_at), seen[1].ended);

    // The other delivery's first attempt was due before the 410; it runs late, finds the endpoint
    // paused and waits for a resume without sending.
    let requests = rig.sent.lock().expect("sent").len();
    assert!(rig.step(&waiting.id, 1, Reply::Status(200)).await);
    assert_eq!(rig.sent.lock().expect("sent").len(), requests);
    assert_eq!(
        rig.delivery(&waiting.id).await,
        ("paused".to_owned(), 0, None)
    );
    assert!(rig.job(&waiting.id, 2).await.is_none());
}

#[tokio::test]
async fn finished_jobs_are_pruned_in_chunks_and_nothing_else_goes() {
    let rig = Rig::new().await;
    let now = Utc::now().timestamp();
    let insert = async |n: usize, job_type: &str, status: &str, done_ago: Option<i64>| {
        for _ in 0..n {
            sqlx::query(
                "INSERT INTO Jobs (job, id, job_type, status, run_at, done_at)
                 VALUES (x'7b7d', $1, $2, $3, $4, $5)",
            )
            .bind(ulid::Ulid::generate().to_string())
            .bind(job_type)
            .bind(status)
            .bind(now - 10 * 86_400)
            .bind(done_ago.map(|ago| now - ago))
            .execute(&rig.pool)
            .await
            .expect("job");
        }
    };
    insert(25, QUEUE, "Done", Some(2 * 86_400)).await;
    insert(4, QUEUE, "Killed", Some(2 * 86_400)).await;
    insert(3, QUEUE, "Done", Some(60)).await;
    insert(2, "another-queue", "Done", Some(2 * 86_400)).await;
    insert(5, QUEUE, "Pending", None).await;

    let deleted = prune_finished(&rig.ctx.pool, 86_400, 10, Duration::ZERO)
        .await
        .expect("prune");
    assert_eq!(deleted, 29, "over three chunks of at most ten");
    let left: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT job_type, status, COUNT(*) FROM Jobs GROUP BY job_type, status ORDER BY 1, 2",
    )
    .fetch_all(&rig.pool)
    .await
    .expect("left");
    assert_eq!(
        left,
        [
            ("another-queue".to_owned(), "Done".to_owned(), 2),
            (QUEUE.to_owned(), "Done".to_owned(), 3),
            (QUEUE.to_owned(), "Pending".to_owned(), 5),
        ]
    );
    assert_eq!(
        prune_finished(&rig.ctx.pool, 86_400, 10, Duration::ZERO)
            .await
            .expect("again"),
        0
    );
}

#[tokio::test]
async fn the_watchdog_fires_only_when_overdue_jobs_wait_and_nothing_is_fetched() {
    let rig = Rig::new().await;
    let now = Utc::now().timestamp();
    let insert = async |job_type: &str, status: &str, due_ago: i64| {
        sqlx::query(
            "INSERT INTO Jobs (job, id, job_type, status, run_at) VALUES (x'7b7d', $1, $2, $3, $4)",
        )
        .bind(ulid::Ulid::generate().to_string())
        .bind(job_type)
        .bind(status)
        .bind(now - due_ago)
        .execute(&rig.pool)
        .await
        .expect("job");
    };
    let every = Duration::from_millis(50);
    let quiet = Duration::from_secs(1);

    // Due, but not long enough to be a sign of anything; other queues and finished jobs
    // are not ours to wait for.
    insert(QUEUE, "Pending", 5).await;
    insert(QUEUE, "Done", 600).await;
    insert("another-queue", "Pending", 600).await;
    assert!(
        tokio::time::timeout(quiet, stalled(&rig.ctx.pool, &rig.ctx, every))
            .await
            .is_err(),
        "nothing overdue: no stall"
    );

    // Overdue jobs while the worker keeps fetching: busy, not stalled. (A fetch every 5 ms
    // against a 200 ms window: only a test starved for the whole window could miss one.)
    insert(QUEUE, "Pending", 60).await;
    insert(QUEUE, "Pending", 3_600).await;
    let fetching = async {
        loop {
            rig.ctx
                .progress
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::select! {
        overdue = stalled(&rig.ctx.pool, &rig.ctx, every * 4) => {
            panic!("a fetching worker was called stalled ({overdue} overdue)")
        }
        () = fetching => unreachable!("fetches forever"),
        () = tokio::time::sleep(quiet) => {}
    }

    // The same jobs with nothing fetched: stalled, and it says how many wait.
    let overdue = tokio::time::timeout(quiet, stalled(&rig.ctx.pool, &rig.ctx, every))
        .await
        .expect("a worker that fetches nothing while jobs are overdue is stalled");
    assert_eq!(overdue, 2);

    // The restart's log line says when the stuck worker last beat.
    sqlx::query(
        "INSERT INTO Workers (id, worker_type, storage_name, last_seen) VALUES ('w1', $1, 's', $2)",
    )
    .bind(QUEUE)
    .bind(Utc::now().timestamp() - 42)
    .execute(&rig.pool)
    .await
    .expect("worker");
    let said = last_heartbeat(&rig.ctx.pool, "w1").await;
    assert!(said == "42 s ago" || said == "43 s ago", "{said}");
    assert_eq!(last_heartbeat(&rig.ctx.pool, "w2").await, "never");
}

#[tokio::test]
async fn outcomes_recorded_together_each_get_their_own_answer() {
    each_outcome_gets_its_own_answer(Rig::new().await).await;
}

#[tokio::test]
async fn outcomes_committed_by_the_writer_each_get_their_own_answer() {
    each_outcome_gets_its_own_answer(Rig::with_writer().await).await;
}

async fn each_outcome_gets_its_own_answer(rig: Rig) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(rig.new_delivery().await.id);
    }
    // A delivery that does not exist: its attempt row breaks the foreign key, so a group
    // holding it fails and is written again one outcome at a time.
    ids.insert(2, "no-such-delivery".to_owned());
    let outcome = |id: &str| Outcome {
        job: DeliveryJob::first(id, 1),
        origin: Origin::Queue,
        started_ms: 1_000,
        now_ms: 2_000,
        url: "https://down.example/hooks".to_owned(),
        http_status: Some(200),
        latency_ms: 5,
        error: None,
        body_prefix: Some(b"ok".to_vec()),
        step: Step::Delivered,
    };
    let answers =
        futures_util::future::join_all(ids.iter().map(|id| rig.ctx.recorder.record(outcome(id))))
            .await;
    for (id, answer) in ids.iter().zip(&answers) {
        if id == "no-such-delivery" {
            assert!(answer.is_err(), "{id}: {answer:?}");
        } else {
            assert!(answer.is_ok(), "{id}: {answer:?}");
            assert_eq!(rig.delivery(id).await, ("delivered".to_owned(), 1, None));
        }
    }
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM delivery_attempts")
        .fetch_one(&rig.pool)
        .await
        .expect("count");
    assert_eq!(attempts, 5);
}

/// A job of an attempt this process already has in flight: apalis acknowledges it when the
/// handler returns, so it leaves a copy that looks again later — if the copy in flight was
/// handed off and failed to record, nothing else would send the attempt. A handed-off copy
/// meeting an apalis one in flight leaves nothing (apalis re-runs its own on failure).
#[tokio::test]
async fn a_queued_copy_of_an_attempt_in_flight_looks_again_later_a_handed_off_one_does_not() {
    let rig = Rig::new().await;
    let delivery = rig.new_delivery().await;
    let job = DeliveryJob::first(&delivery.id, 1);
    let copies = |rig: &Rig| {
        let key = format!("{}:w%", job.idempotency_key());
        let pool = rig.pool.clone();
        async move {
            sqlx::query_as::<_, (i64,)>(
                "SELECT run_at FROM Jobs WHERE job_type = $1 AND idempotency_key LIKE $2",
            )
            .bind(QUEUE)
            .bind(key)
            .fetch_all(&pool)
            .await
            .expect("jobs")
        }
    };
    let in_flight = rig
        .ctx
        .attempts
        .try_acquire(job.idempotency_key())
        .expect("the slot is free");
    let never = async |_: &OutboundRequest| -> AttemptRecord { unreachable!("nothing is sent") };

    attempt(&job, &rig.ctx, Origin::Handoff, never)
        .await
        .expect("handed-off copy");
    assert!(
        copies(&rig).await.is_empty(),
        "a handed-off copy leaves nothing"
    );

    attempt(&job, &rig.ctx, Origin::Queue, never)
        .await
        .expect("queued copy");
    let now = rig.clock.now().timestamp();
    assert_eq!(
        copies(&rig).await,
        [(now + IN_FLIGHT_DELAY_SECS,)],
        "one copy, due a little later"
    );
    drop(in_flight);
}

/// Counts wake-ups.
#[derive(Default)]
struct Wakes(std::sync::atomic::AtomicUsize);

impl futures_util::task::ArcWake for Wakes {
    fn wake_by_ref(arc_self: &Arc<Self>) {
        arc_self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Polls `strategy` with a counting waker until a tick fires, then waits ten periods without
/// polling it again; returns how often the worker was woken meanwhile.
async fn wakes_after_a_tick(strategy: &mut impl PollStrategy, period: Duration) -> usize {
    let wakes = Arc::new(Wakes::default());
    let waker = futures_util::task::waker(Arc::clone(&wakes));
    let mut cx = std::task::Context::from_waker(&waker);
    let snapshot = PollSnapshot::default();
    while strategy.poll_drive(&mut cx, &snapshot).is_pending() {
        tokio::time::sleep(period / 4).await;
    }
    let before = wakes.0.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(period * 10).await;
    wakes.0.load(std::sync::atomic::Ordering::SeqCst) - before
}

#[tokio::test]
async fn a_fired_poll_tick_arms_the_next_one() {
    let period = Duration::from_millis(20);
    assert!(
        wakes_after_a_tick(&mut Ticker::new(period), period).await >= 1,
        "after a tick the worker must be woken for the next poll without asking again"
    );
    // What the Ticker replaces: apalis' interval strategy wakes nobody after a tick, which
    // froze the worker when its heartbeat's wake-up had been spent too.
    assert_eq!(
        wakes_after_a_tick(&mut IntervalStrategy::new(period), period).await,
        0,
        "apalis' IntervalStrategy re-arms its timer now: Ticker may be unnecessary"
    );
}
