//! Replica selection policy: which replicas may serve a read ([`eligibility`]) and which of
//! those gets it ([`pick_replica`]: weighted round robin, weighted random or least
//! connections).
//!
//! Must not: do I/O, allocate, take locks or measure anything; it only reads the atomics in
//! `state` (and claims a half-open circuit's one trial).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rand::Rng;

use super::state::{now_ms, BackendState, Ineligible, ShardState};
use super::ReplicationSettings;

/// What a particular read needs from a replica beyond the configured bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadRequirements {
    /// Read-your-writes: the replica must have replayed this LSN (0 = none).
    pub min_lsn: u64,
    /// Per-statement staleness bound (only ever tightens `max_lag`).
    pub max_lag: Option<Duration>,
}

/// How reads are spread over the eligible replicas of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balancing {
    RoundRobin,
    Random,
    LeastConnections,
}

/// Whether `b` may serve a read now, or the first reason it may not.
pub fn eligibility(
    b: &BackendState,
    settings: &ReplicationSettings,
    req: &ReadRequirements,
    now_ms: u64,
) -> Result<(), Ineligible> {
    if !b.healthy() {
        return Err(Ineligible::Down);
    }
    if !b.in_recovery() {
        return Err(Ineligible::NotInRecovery);
    }
    if !b.circuit_allows(now_ms) {
        return Err(Ineligible::Banned);
    }
    let lag_bytes = b.lag_bytes();
    if settings.max_lag_bytes > 0 && lag_bytes > settings.max_lag_bytes {
        return Err(Ineligible::LagBytes(lag_bytes));
    }
    let lag = b.lag();
    if !settings.max_lag.is_zero() && lag > settings.max_lag {
        return Err(Ineligible::LagTime(lag));
    }
    let replay = b.replay_lsn();
    if replay < req.min_lsn {
        return Err(Ineligible::BehindLsn {
            replay,
            need: req.min_lsn,
        });
    }
    if let Some(max) = req.max_lag {
        if lag > max {
            return Err(Ineligible::TooStale(lag));
        }
    }
    Ok(())
}

/// Chooses among the eligible replicas (weight `w` gets `w` shares; missing weights count
/// as 1, weight 0 excludes a replica) and returns its index; `Err` carries the reason of the
/// candidate closest to eligible (`NoReplicas` when there is none at all). Claims the trial
/// of a half-open circuit when it picks such a replica.
pub fn pick_replica(
    shard: &ShardState,
    weights: &[u32],
    balancing: Balancing,
    rr: &AtomicUsize,
    settings: &ReplicationSettings,
    req: &ReadRequirements,
) -> Result<usize, Ineligible> {
    pick_replica_at(shard, weights, balancing, rr, settings, req, now_ms())
}

/// [`pick_replica`] with an explicit clock.
pub fn pick_replica_at(
    shard: &ShardState,
    weights: &[u32],
    balancing: Balancing,
    rr: &AtomicUsize,
    settings: &ReplicationSettings,
    req: &ReadRequirements,
    now_ms: u64,
) -> Result<usize, Ineligible> {
    let replicas = &shard.replicas;
    let weight = |i: usize| weights.get(i).copied().unwrap_or(1) as u64;
    let ok = |i: usize| weight(i) > 0 && eligibility(&replicas[i], settings, req, now_ms).is_ok();

    // Pass 1: total weight of the eligible ones, best reason among the others.
    let mut total = 0u64;
    let mut best: Option<Ineligible> = None;
    for (i, r) in replicas.iter().enumerate() {
        if weight(i) == 0 {
            continue;
        }
        match eligibility(r, settings, req, now_ms) {
            Ok(()) => total += weight(i),
            Err(e) => {
                if best.is_none_or(|b| e.rank() < b.rank()) {
                    best = Some(e);
                }
            }
        }
    }
    if total == 0 {
        return Err(best.unwrap_or(Ineligible::NoReplicas));
    }

    // Pass 2: choose. State may change between the passes; the walk copes.
    let n = replicas.len();
    let chosen = match balancing {
        Balancing::RoundRobin | Balancing::Random => {
            let mut k = if balancing == Balancing::RoundRobin {
                rr.fetch_add(1, Ordering::Relaxed) as u64 % total
            } else {
                rand::thread_rng().gen_range(0..total)
            };
            let mut chosen = None;
            for i in (0..n).filter(|&i| ok(i)) {
                chosen = Some(i);
                if k < weight(i) {
                    break;
                }
                k -= weight(i);
            }
            chosen
        }
        Balancing::LeastConnections => {
            // Lowest active/weight; ties rotate so equal replicas share the load.
            let start = rr.fetch_add(1, Ordering::Relaxed) % n;
            let mut chosen: Option<(usize, u64, u64)> = None;
            for i in (0..n).map(|j| (start + j) % n).filter(|&i| ok(i)) {
                let (a, w) = (
                    replicas[i].active().load(Ordering::Relaxed) as u64,
                    weight(i),
                );
                if chosen.is_none_or(|(_, ca, cw)| a * cw < ca * w) {
                    chosen = Some((i, a, w));
                }
            }
            chosen.map(|c| c.0)
        }
    };
    let Some(chosen) = chosen else {
        return Err(best.unwrap_or(Ineligible::Banned));
    };

    // Admission: closed circuits always admit; a half-open one admits one trial. If another
    // request took it, move on to the next eligible replica.
    for i in (0..n).map(|j| (chosen + j) % n) {
        if ok(i) && replicas[i].try_admit(settings, now_ms) {
            return Ok(i);
        }
    }
    Err(Ineligible::Banned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Circuit;

    fn settings() -> ReplicationSettings {
        ReplicationSettings {
            max_lag_bytes: 1000,
            max_lag: Duration::from_secs(1),
            check_interval: Duration::from_millis(100),
            ban_time: Duration::from_secs(5),
            ban_after_errors: 3,
        }
    }

    fn shard(n: usize) -> ShardState {
        let s = ShardState::new("p:1".into(), (0..n).map(|i| format!("r:{i}")).collect());
        for r in &s.replicas {
            r.set_measured(true, 100, 100, 0, Some(Duration::ZERO));
        }
        s
    }

    fn ban(b: &BackendState, s: &ReplicationSettings) {
        for _ in 0..s.ban_after_errors {
            b.record_failure_at(s, 0);
        }
    }

    #[test]
    fn eligibility_cases() {
        let s = settings();
        let none = ReadRequirements::default();
        let b = BackendState::replica("r:1".into());
        assert_eq!(eligibility(&b, &s, &none, 0), Err(Ineligible::Down));
        b.set_measured(true, 100, 100, 0, Some(Duration::ZERO));
        assert_eq!(eligibility(&b, &s, &none, 0), Ok(()));
        b.set_measured(false, 100, 100, 0, Some(Duration::ZERO));
        assert_eq!(
            eligibility(&b, &s, &none, 0),
            Err(Ineligible::NotInRecovery)
        );
        b.set_measured(true, 100, 100, 1001, Some(Duration::ZERO));
        assert_eq!(
            eligibility(&b, &s, &none, 0),
            Err(Ineligible::LagBytes(1001))
        );
        b.set_measured(true, 100, 100, 1000, Some(Duration::ZERO));
        assert_eq!(eligibility(&b, &s, &none, 0), Ok(()));
        let two = Duration::from_secs(2);
        b.set_measured(true, 100, 100, 0, Some(two));
        assert_eq!(eligibility(&b, &s, &none, 0), Err(Ineligible::LagTime(two)));
        b.set_measured(true, 100, 100, 0, None);
        assert!(matches!(
            eligibility(&b, &s, &none, 0),
            Err(Ineligible::LagTime(_))
        ));
        let unbounded = ReplicationSettings {
            max_lag_bytes: 0,
            max_lag: Duration::ZERO,
            ..s.clone()
        };
        b.set_measured(true, 100, 100, 1 << 40, Some(Duration::from_secs(3600)));
        assert_eq!(eligibility(&b, &unbounded, &none, 0), Ok(()));

        let half = Duration::from_millis(500);
        b.set_measured(true, 100, 100, 0, Some(half));
        let ryw = ReadRequirements {
            min_lsn: 101,
            max_lag: None,
        };
        assert_eq!(
            eligibility(&b, &s, &ryw, 0),
            Err(Ineligible::BehindLsn {
                replay: 100,
                need: 101
            })
        );
        let ryw = ReadRequirements {
            min_lsn: 100,
            max_lag: None,
        };
        assert_eq!(eligibility(&b, &s, &ryw, 0), Ok(()));
        let fresh = ReadRequirements {
            min_lsn: 0,
            max_lag: Some(Duration::from_millis(100)),
        };
        assert_eq!(
            eligibility(&b, &s, &fresh, 0),
            Err(Ineligible::TooStale(half))
        );

        b.set_measured(true, 100, 100, 0, Some(Duration::ZERO));
        ban(&b, &s);
        assert_eq!(eligibility(&b, &s, &none, 10), Err(Ineligible::Banned));
        assert_eq!(eligibility(&b, &s, &none, 5000), Ok(())); // trial available
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let (s, sh, rr) = (settings(), shard(3), AtomicUsize::new(0));
        let mut counts = [0; 3];
        for _ in 0..300 {
            let i = pick_replica_at(
                &sh,
                &[],
                Balancing::RoundRobin,
                &rr,
                &s,
                &Default::default(),
                0,
            )
            .unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [100, 100, 100]);
    }

    #[test]
    fn weights_are_respected() {
        let (s, sh, rr) = (settings(), shard(2), AtomicUsize::new(0));
        let mut counts = [0; 2];
        for _ in 0..400 {
            let i = pick_replica_at(
                &sh,
                &[3, 1],
                Balancing::RoundRobin,
                &rr,
                &s,
                &Default::default(),
                0,
            )
            .unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [300, 100]);
        let mut counts = [0; 2];
        for _ in 0..20000 {
            let i = pick_replica_at(
                &sh,
                &[3, 1],
                Balancing::Random,
                &rr,
                &s,
                &Default::default(),
                0,
            )
            .unwrap();
            counts[i] += 1;
        }
        let ratio = counts[0] as f64 / counts[1] as f64;
        assert!((2.6..3.4).contains(&ratio), "{counts:?}");
        // Weight 0 excludes.
        for _ in 0..10 {
            let i = pick_replica_at(
                &sh,
                &[0, 1],
                Balancing::RoundRobin,
                &rr,
                &s,
                &Default::default(),
                0,
            );
            assert_eq!(i, Ok(1));
        }
        let none = pick_replica_at(
            &sh,
            &[0, 0],
            Balancing::RoundRobin,
            &rr,
            &s,
            &Default::default(),
            0,
        );
        assert_eq!(none, Err(Ineligible::NoReplicas));
    }

    #[test]
    fn least_connections_picks_least_active() {
        let (s, sh, rr) = (settings(), shard(3), AtomicUsize::new(0));
        sh.replicas[0].active().store(5, Ordering::Relaxed);
        sh.replicas[1].active().store(2, Ordering::Relaxed);
        sh.replicas[2].active().store(7, Ordering::Relaxed);
        for _ in 0..5 {
            let i = pick_replica_at(
                &sh,
                &[],
                Balancing::LeastConnections,
                &rr,
                &s,
                &Default::default(),
                0,
            );
            assert_eq!(i, Ok(1));
        }
        // Weighted: 5/3 < 2/1.
        let i = pick_replica_at(
            &sh,
            &[3, 1, 1],
            Balancing::LeastConnections,
            &rr,
            &s,
            &Default::default(),
            0,
        );
        assert_eq!(i, Ok(0));
        // Ties rotate.
        for r in &sh.replicas {
            r.active().store(0, Ordering::Relaxed);
        }
        let mut counts = [0; 3];
        for _ in 0..30 {
            let i = pick_replica_at(
                &sh,
                &[],
                Balancing::LeastConnections,
                &rr,
                &s,
                &Default::default(),
                0,
            )
            .unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [10, 10, 10]);
    }

    #[test]
    fn skips_ineligible() {
        let (s, sh, rr) = (settings(), shard(3), AtomicUsize::new(0));
        sh.replicas[0].set_down("refused".into());
        sh.replicas[2].set_measured(true, 100, 100, 5000, Some(Duration::ZERO));
        for bal in [
            Balancing::RoundRobin,
            Balancing::Random,
            Balancing::LeastConnections,
        ] {
            for _ in 0..20 {
                assert_eq!(
                    pick_replica_at(&sh, &[], bal, &rr, &s, &Default::default(), 0),
                    Ok(1)
                );
            }
        }
    }

    #[test]
    fn returns_best_reason_when_none() {
        let (s, sh, rr) = (settings(), shard(3), AtomicUsize::new(0));
        let none = ReadRequirements::default();
        sh.replicas[0].set_down("refused".into());
        ban(&sh.replicas[1], &s);
        sh.replicas[2].set_measured(true, 100, 100, 5000, Some(Duration::ZERO));
        let r = pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 10);
        assert_eq!(r, Err(Ineligible::LagBytes(5000)));
        sh.replicas[2].set_measured(true, 100, 100, 0, Some(Duration::ZERO));
        let ryw = ReadRequirements {
            min_lsn: 200,
            max_lag: None,
        };
        let r = pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &ryw, 10);
        assert_eq!(
            r,
            Err(Ineligible::BehindLsn {
                replay: 100,
                need: 200
            })
        );
        sh.replicas[2].set_down("refused".into());
        let r = pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 10);
        assert_eq!(r, Err(Ineligible::Banned));
        let empty = ShardState::new("p:1".into(), vec![]);
        let r = pick_replica_at(&empty, &[], Balancing::LeastConnections, &rr, &s, &none, 10);
        assert_eq!(r, Err(Ineligible::NoReplicas));
    }

    #[test]
    fn half_open_trial_goes_to_one_request() {
        let (s, sh, rr) = (settings(), shard(1), AtomicUsize::new(0));
        let none = ReadRequirements::default();
        ban(&sh.replicas[0], &s);
        assert_eq!(
            pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 100),
            Err(Ineligible::Banned)
        );
        assert_eq!(
            pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 5000),
            Ok(0)
        );
        assert_eq!(sh.replicas[0].circuit(), Circuit::HalfOpen);
        assert_eq!(
            pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 5001),
            Err(Ineligible::Banned)
        );
        sh.replicas[0].record_success_at(5002);
        assert_eq!(
            pick_replica_at(&sh, &[], Balancing::RoundRobin, &rr, &s, &none, 5003),
            Ok(0)
        );
    }
}
