//! The process-wide cap on buffered client input (`max_buffered_bytes`).
//!
//! Owns: the budget that large client messages (beyond [`LARGE_MESSAGE`]) reserve while they
//! are read and forwarded, so that many clients each sending a large message cannot together
//! grow pgvane's memory without limit; a message that cannot get its share within the wait
//! fails with 53200 (out of memory), as PostgreSQL reports memory exhaustion.
//!
//! Must not: read sockets; the session asks before reading the rest of a large message.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Messages up to this size are read without a reservation (the per-read chunk and ordinary
/// statements stay cheap).
pub const LARGE_MESSAGE: usize = 256 * 1024;

/// Reservations are counted in KiB so that a semaphore's u32 permits cover any size.
const UNIT: usize = 1024;

pub struct InputBudget {
    sem: Arc<Semaphore>,
    total: usize,
}

/// Why a large message cannot be buffered.
#[derive(Debug, PartialEq, Eq)]
pub enum BudgetError {
    /// The message alone is larger than the whole budget.
    TooLarge { len: usize, total: usize },
    /// Other clients' messages hold the budget for longer than the wait.
    Exhausted { len: usize, total: usize },
}

impl BudgetError {
    pub fn message(&self) -> String {
        match self {
            BudgetError::TooLarge { len, total } => format!(
                "out of memory: a {len}-byte message exceeds max_buffered_bytes ({total})"
            ),
            BudgetError::Exhausted { len, total } => format!(
                "out of memory: no room for a {len}-byte message within max_buffered_bytes ({total}); other clients' large messages hold it"
            ),
        }
    }
}

fn units(len: usize) -> u32 {
    len.div_ceil(UNIT).min(u32::MAX as usize) as u32
}

impl InputBudget {
    pub fn new(total: usize) -> InputBudget {
        let permits = (total / UNIT).min(Semaphore::MAX_PERMITS);
        InputBudget {
            sem: Arc::new(Semaphore::new(permits)),
            total,
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> usize {
        self.sem.available_permits() * UNIT
    }

    /// Reserve room for a message of `len` bytes, waiting up to `wait` for others to finish.
    pub async fn reserve(
        &self,
        len: usize,
        wait: Duration,
    ) -> Result<OwnedSemaphorePermit, BudgetError> {
        let total = self.total;
        if len > total {
            return Err(BudgetError::TooLarge { len, total });
        }
        let n = units(len);
        if let Ok(p) = self.sem.clone().try_acquire_many_owned(n) {
            return Ok(p);
        }
        match tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n)).await {
            Ok(Ok(p)) => Ok(p),
            _ => Err(BudgetError::Exhausted { len, total }),
        }
    }
}

/// The declared length of the message at the start of `buf`, when it is large.
pub fn large_message_at(buf: &[u8]) -> Option<usize> {
    let len = buf.get(1..5)?;
    let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let len = usize::try_from(len).ok()? + 1;
    (len > LARGE_MESSAGE).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_and_fail_within_the_total() {
        let b = InputBudget::new(4 * 1024 * 1024);
        let a = b.reserve(3 * 1024 * 1024, Duration::ZERO).await;
        assert!(a.is_ok());
        let e = b.reserve(2 * 1024 * 1024, Duration::from_millis(20)).await;
        assert!(matches!(e, Err(BudgetError::Exhausted { .. })));
        drop(a);
        assert!(b.reserve(2 * 1024 * 1024, Duration::ZERO).await.is_ok());
        assert_eq!(b.available(), 4 * 1024 * 1024);
        let e = b.reserve(5 * 1024 * 1024, Duration::ZERO).await;
        assert!(matches!(e, Err(BudgetError::TooLarge { .. })));
        assert!(e
            .err()
            .is_some_and(|e| e.message().contains("max_buffered_bytes")));
    }

    #[tokio::test]
    async fn a_waiter_gets_room_when_it_frees() {
        let b = Arc::new(InputBudget::new(1024 * 1024));
        let held = b.reserve(1024 * 1024, Duration::ZERO).await;
        let b2 = b.clone();
        let waiter =
            tokio::spawn(
                async move { b2.reserve(512 * 1024, Duration::from_secs(5)).await.is_ok() },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert!(waiter.await.unwrap_or(false));
    }

    #[test]
    fn large_messages_are_recognised_from_their_header() {
        let mut m = vec![b'Q'];
        m.extend_from_slice(&(1_000_000i32).to_be_bytes());
        assert_eq!(large_message_at(&m), Some(1_000_001));
        let mut small = vec![b'Q'];
        small.extend_from_slice(&(100i32).to_be_bytes());
        assert_eq!(large_message_at(&small), None);
        assert_eq!(large_message_at(b"Q\0\0"), None);
        let mut neg = vec![b'Q'];
        neg.extend_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(large_message_at(&neg), None);
    }
}
