//! Unit tests of pool maintenance against a stand-in server on loopback (kept apart from
//! `pool.rs` so that file stays readable in one sitting).

use super::*;
use std::sync::atomic::AtomicUsize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn settings(port: u16, min: usize, size: usize) -> PoolSettings {
    PoolSettings {
        size,
        min_size: min,
        reserve_size: 0,
        reserve_timeout: Duration::from_secs(5),
        wait_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(600),
        lifetime: Duration::from_secs(3600),
        check_delay: Duration::from_secs(30),
        check_query: String::new(),
        reset_query: String::new(),
        library_check: false,
        max_prepared: 10,
        connect: ConnectParams {
            host: "127.0.0.1".into(),
            port,
            user: "u".into(),
            password: None,
            dbname: "d".into(),
            connect_timeout: Duration::from_secs(2),
            startup: Vec::new(),
        },
    }
}

fn key(port: u16) -> PoolKey {
    PoolKey {
        user: "u".into(),
        database: "d".into(),
        host: "127.0.0.1".into(),
        port,
        dbname: "d".into(),
    }
}

/// A stand-in server on loopback: reads the startup packet, answers AuthenticationOk,
/// BackendKeyData and ReadyForQuery, then keeps the socket until the peer closes it.
/// Returns its port and the number of logins it accepted.
async fn fake_server() -> (u16, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let logins = Arc::new(AtomicUsize::new(0));
    let n = logins.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let n = n.clone();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                if s.read_exact(&mut body).await.is_err() {
                    return;
                }
                let mut out = vec![b'R', 0, 0, 0, 8, 0, 0, 0, 0];
                out.extend_from_slice(&[b'K', 0, 0, 0, 12, 0, 0, 0, 7, 0, 0, 0, 9]);
                out.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
                if s.write_all(&out).await.is_ok() {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink).await, Ok(k) if k > 0) {}
            });
        }
    });
    (port, logins)
}

/// Runs `body` on a single-threaded runtime in its own thread: if anything in it holds
/// the thread (a spin), the test fails after `limit` instead of hanging.
fn on_one_thread<F>(limit: Duration, body: impl FnOnce() -> F + Send + 'static)
where
    F: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(body());
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .expect("the runtime was blocked (maintenance spun or blocked)");
}

#[test]
fn missing_counts_up_to_the_capped_minimum() {
    assert_eq!(missing(0, 2, 5), 2);
    assert_eq!(missing(1, 2, 5), 1);
    assert_eq!(missing(2, 2, 5), 0);
    assert_eq!(missing(7, 2, 5), 0);
    assert_eq!(missing(0, 9, 3), 3, "never above the pool size");
    assert_eq!(missing(0, 0, 3), 0);
}

#[test]
fn expiry_rules() {
    let now = Instant::now();
    let mut s = settings(1, 0, 1);
    s.lifetime = Duration::from_secs(10);
    s.idle_timeout = Duration::from_secs(5);
    let ago = |secs| now - Duration::from_secs(secs);
    assert!(past_lifetime(&s, now, ago(10)));
    assert!(!past_lifetime(&s, now, ago(9)));
    assert!(past_idle_timeout(&s, now, ago(5)));
    assert!(!past_idle_timeout(&s, now, ago(4)));
    // A timestamp after `now` (taken on another thread) is not expired, and no panic.
    assert!(!past_lifetime(&s, now, now + Duration::from_secs(1)));
    s.lifetime = Duration::ZERO;
    s.idle_timeout = Duration::ZERO;
    assert!(!past_lifetime(&s, now, ago(100_000)), "0 = off");
    assert!(!past_idle_timeout(&s, now, ago(100_000)), "0 = off");
}

#[test]
fn min_pool_size_is_opened_once_and_the_runtime_stays_free() {
    on_one_thread(Duration::from_secs(20), || async {
        let (port, logins) = fake_server().await;
        let pool = Pool::new(key(port), settings(port, 2, 5));
        // A client takes one connection and gives it back, as in the report.
        let c = pool.get().await.unwrap();
        pool.put(c);
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(2500)).await;
        ticker.abort();
        assert_eq!(pool.open_count(), 2);
        assert_eq!(pool.idle_count(), 2);
        assert_eq!(logins.load(Ordering::Relaxed), 2, "no churn between rounds");
        assert!(
            ticks.load(Ordering::Relaxed) > 100,
            "other tasks ran: {} ticks in 2.5 s",
            ticks.load(Ordering::Relaxed)
        );
    });
}

#[test]
fn refused_connections_are_retried_each_round_without_spinning() {
    on_one_thread(Duration::from_secs(20), || async {
        // A port nobody listens on: every connect is refused at once.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pool = Pool::new(key(port), settings(port, 3, 5));
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                t.fetch_add(1, Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        ticker.abort();
        assert_eq!(pool.open_count(), 0);
        assert!(ticks.load(Ordering::Relaxed) > 60);
    });
}

#[test]
fn closed_pool_stops_maintenance_and_paused_pool_opens_nothing() {
    on_one_thread(Duration::from_secs(20), || async {
        let (port, logins) = fake_server().await;
        let pool = Pool::new(key(port), settings(port, 2, 5));
        pool.pause();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(logins.load(Ordering::Relaxed), 0, "paused: nothing opened");
        pool.resume();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(pool.open_count(), 2);
        pool.close();
        assert_eq!(pool.open_count(), 0);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            logins.load(Ordering::Relaxed),
            2,
            "closed: nothing reopened"
        );
    });
}

#[test]
fn idle_timeout_spares_the_minimum_and_reconnect_generation_sticks() {
    on_one_thread(Duration::from_secs(20), || async {
        let (port, logins) = fake_server().await;
        let mut s = settings(port, 1, 5);
        s.idle_timeout = Duration::from_millis(300);
        let pool = Pool::new(key(port), s);
        let a = pool.get().await.unwrap();
        let b = pool.get().await.unwrap();
        let c = pool.get().await.unwrap();
        pool.put(a);
        pool.put(b);
        pool.put(c);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            pool.open_count(),
            1,
            "idle ones closed down to min_pool_size"
        );
        let before = logins.load(Ordering::Relaxed);
        // After RECONNECT, new connections are reused, not retired on every return.
        pool.reconnect();
        let c = pool.get().await.unwrap();
        pool.put(c);
        let c = pool.get().await.unwrap();
        pool.put(c);
        assert_eq!(pool.idle_count(), 1);
        assert!(logins.load(Ordering::Relaxed) - before <= 2);
    });
}
