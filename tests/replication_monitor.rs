//! The replication monitor against real PostgreSQL streaming replication: lag in bytes and
//! time, eligibility, read-your-writes waiting and a replica going down.

mod common;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::pgvane::replication::*;
use common::*;

fn target(srv: &PgServer) -> MonitorTarget {
    MonitorTarget {
        host: "127.0.0.1".into(),
        port: srv.port(),
        user: "app".into(),
        password: Some(APP_PASSWORD.into()),
        dbname: "app".into(),
    }
}

/// Polls `cond` every 20 ms for up to `within`; panics with `what` and the replica's state.
async fn wait_until(
    what: &str,
    within: Duration,
    b: &BackendState,
    cond: impl Fn(&BackendState) -> bool,
) {
    let deadline = Instant::now() + within;
    while !cond(b) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: healthy={} in_recovery={} replay={} lag_bytes={} lag={:?} error={:?}",
            b.healthy(),
            b.in_recovery(),
            format_lsn(b.replay_lsn()),
            b.lag_bytes(),
            b.lag(),
            b.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_tracks_real_replica() {
    let primary = PgServer::start();
    let mut replica = primary.start_replica();
    primary.psql("app", "CREATE TABLE filler (id int, pad text)");
    replica.wait_replay_caught_up(&primary);

    let settings = ReplicationSettings {
        max_lag_bytes: 1 << 20,
        max_lag: Duration::from_secs(5),
        check_interval: Duration::from_millis(100),
        ban_time: Duration::from_secs(1),
        ban_after_errors: 3,
    };
    let shard = Arc::new(ShardState::new(
        format!("127.0.0.1:{}", primary.port()),
        vec![format!("127.0.0.1:{}", replica.port())],
    ));
    let monitor = spawn_monitor(
        shard.clone(),
        target(&primary),
        vec![target(&replica)],
        settings.clone(),
    );
    let r = shard.replicas[0].clone();
    let none = ReadRequirements::default();
    let rr = AtomicUsize::new(0);

    // Caught up: healthy, no lag, eligible.
    wait_until("caught-up replica", Duration::from_secs(10), &r, |b| {
        b.healthy() && b.lag_bytes() == 0 && b.replay_lsn() > 0
    })
    .await;
    assert!(shard.primary.healthy() && !shard.primary.in_recovery());
    assert!(shard.primary_lsn() > 0);
    assert!(r.in_recovery());
    assert_eq!(r.state_label(&settings), "ok");
    assert_eq!(eligibility(&r, &settings, &none, now_ms()), Ok(()));
    assert_eq!(
        pick_replica(&shard, &[1], Balancing::RoundRobin, &rr, &settings, &none),
        Ok(0)
    );

    // Idle primary: time lag does not grow with the age of the last replayed transaction.
    let idle_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < idle_until {
        assert!(
            r.lag() < Duration::from_millis(500),
            "idle lag {:?}",
            r.lag()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        r.lag() < Duration::from_millis(500),
        "idle lag {:?}",
        r.lag()
    );
    assert_eq!(r.lag_bytes(), 0);

    // Replay paused, ~6 MB written on the primary: over the 1 MB bound.
    replica.pause_replay();
    primary.psql(
        "app",
        "INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 6000) g",
    );
    let target_lsn = parse_lsn(&primary.psql("app", "SELECT pg_current_wal_lsn()")).expect("lsn");
    wait_until("lag over 1 MB", Duration::from_secs(10), &r, |b| {
        b.lag_bytes() > 1 << 20
    })
    .await;
    assert!(
        matches!(eligibility(&r, &settings, &none, now_ms()), Err(Ineligible::LagBytes(n)) if n > 1 << 20)
    );
    assert_eq!(r.state_label(&settings), "lagging");
    assert!(matches!(
        pick_replica(&shard, &[1], Balancing::RoundRobin, &rr, &settings, &none),
        Err(Ineligible::LagBytes(_))
    ));
    assert!(
        r.lag() > Duration::ZERO,
        "a paused replica that is behind has a time lag"
    );
    let ryw = ReadRequirements {
        min_lsn: target_lsn,
        max_lag: None,
    };
    let unbounded = ReplicationSettings {
        max_lag_bytes: 0,
        ..settings.clone()
    };
    assert!(matches!(
        eligibility(&r, &unbounded, &ryw, now_ms()),
        Err(Ineligible::BehindLsn { need, .. }) if need == target_lsn
    ));

    // Read-your-writes: no catch-up while paused ...
    let t0 = Instant::now();
    assert!(
        !shard
            .wait_for_lsn(target_lsn, Duration::from_millis(300))
            .await
    );
    assert!(t0.elapsed() >= Duration::from_millis(300));
    // ... and a prompt wake-up once replay resumes.
    let waiter = {
        let shard = shard.clone();
        tokio::spawn(async move {
            shard
                .wait_for_lsn(target_lsn, Duration::from_secs(15))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    replica.resume_replay();
    assert!(waiter.await.unwrap(), "wait_for_lsn after resume");
    assert!(r.replay_lsn() >= target_lsn);
    assert_eq!(eligibility(&r, &unbounded, &ryw, now_ms()), Ok(()));

    // Back to ok once caught up.
    wait_until("recovery after resume", Duration::from_secs(10), &r, |b| {
        b.state_label(&settings) == "ok" && b.lag_bytes() == 0
    })
    .await;
    assert_eq!(eligibility(&r, &settings, &none, now_ms()), Ok(()));

    // Replica stops: down, no reads; the primary is unaffected.
    replica.kill_immediate();
    wait_until("replica down", Duration::from_secs(10), &r, |b| {
        !b.healthy()
    })
    .await;
    assert_eq!(r.state_label(&settings), "down");
    assert_eq!(
        eligibility(&r, &settings, &none, now_ms()),
        Err(Ineligible::Down)
    );
    assert_eq!(
        pick_replica(&shard, &[1], Balancing::RoundRobin, &rr, &settings, &none),
        Err(Ineligible::Down)
    );
    assert!(r.last_error().is_some());
    // Probe failures feed the circuit breaker (ban after 3 within ~0.3 s of connect failures).
    wait_until("replica banned", Duration::from_secs(10), &r, |b| {
        b.circuit() != Circuit::Closed
    })
    .await;
    assert!(shard.primary.healthy());

    // The monitor stops once the shard state is gone.
    drop(r);
    drop(shard);
    tokio::time::timeout(Duration::from_secs(10), monitor)
        .await
        .expect("monitor stops when the shard is dropped")
        .unwrap();
}
