//! A short-lived cache of token decisions in front of an authenticator.
//!
//! In kube mode every Sign request costs a TokenReview on the API server,
//! before the per-identity rate limit can even say who is calling. A
//! workload that floods the CA with one token would turn each request into
//! an API call, and the API server's fairness limits would then slow every
//! other workload's TokenReview too. With the cache, one token costs at most
//! one TokenReview per [`AUTH_CACHE_TTL`]: concurrent requests with the same
//! token share the review in flight, and later ones reuse its answer.
//!
//! Only definite answers are kept (a ServiceAccount, or a rejection); an
//! unavailable API server is asked again on the next request. Tokens are
//! keyed by their SHA-256 digest, never stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::auth::{AuthError, AuthFuture, ServiceAccountRef, TokenAuthenticator};
use crate::config::{AUTH_CACHE_MAX_ENTRIES, AUTH_CACHE_TTL};

type Decision = Result<ServiceAccountRef, AuthError>;

struct Slot {
    created: Instant,
    decision: OnceCell<Decision>,
}

/// Caches `inner`'s decisions for a short time (see the module docs).
pub struct CachedAuthenticator<A> {
    inner: A,
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
}

impl<A: TokenAuthenticator> CachedAuthenticator<A> {
    /// `inner` behind a cache with the default lifetime and size.
    pub fn new(inner: A) -> Self {
        Self::with_limits(inner, AUTH_CACHE_TTL, AUTH_CACHE_MAX_ENTRIES)
    }

    /// `inner` behind a cache keeping decisions for `ttl`, at most
    /// `max_entries` tokens (beyond that, new tokens are not cached).
    pub fn with_limits(inner: A, ttl: Duration, max_entries: usize) -> Self {
        Self {
            inner,
            ttl,
            max_entries,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The authenticator behind the cache.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Tokens currently cached (tests, metrics).
    pub fn len(&self) -> usize {
        self.slots.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The slot for `key`: the live one, or a new one (None when full).
    fn slot(&self, key: [u8; 32], now: Instant) -> Option<Arc<Slot>> {
        let mut slots = self.slots.lock().ok()?;
        if let Some(s) = slots.get(&key) {
            if now.saturating_duration_since(s.created) < self.ttl {
                return Some(s.clone());
            }
        }
        if slots.len() >= self.max_entries {
            let ttl = self.ttl;
            slots.retain(|_, s| now.saturating_duration_since(s.created) < ttl);
            if slots.len() >= self.max_entries {
                return None;
            }
        }
        let slot = Arc::new(Slot {
            created: now,
            decision: OnceCell::new(),
        });
        slots.insert(key, slot.clone());
        Some(slot)
    }

    fn forget(&self, key: &[u8; 32], slot: &Arc<Slot>) {
        if let Ok(mut slots) = self.slots.lock() {
            if slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
                slots.remove(key);
            }
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl<A: TokenAuthenticator> TokenAuthenticator for CachedAuthenticator<A> {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let key = digest(token);
            let Some(slot) = self.slot(key, Instant::now()) else {
                return self.inner.authenticate(token).await;
            };
            let decision = slot
                .decision
                .get_or_init(|| self.inner.authenticate(token))
                .await
                .clone();
            if matches!(decision, Err(AuthError::Unavailable(_))) {
                self.forget(&key, &slot);
            }
            decision
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Answers after 20 ms, counting calls: "web" is shop/web, "down"
    /// is unavailable, anything else is rejected.
    #[derive(Default)]
    struct Slow(AtomicUsize);

    impl TokenAuthenticator for Slow {
        fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                match token {
                    "web" => Ok(ServiceAccountRef {
                        namespace: "shop".into(),
                        service_account: "web".into(),
                    }),
                    "down" => Err(AuthError::Unavailable("no API server".into())),
                    _ => Err(AuthError::Rejected("unknown token".into())),
                }
            })
        }
    }

    #[tokio::test]
    async fn concurrent_requests_share_one_review_and_answers_expire() {
        let cache = Arc::new(CachedAuthenticator::with_limits(
            Slow::default(),
            Duration::from_millis(300),
            100,
        ));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let c = cache.clone();
                tokio::spawn(async move { c.authenticate("web").await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().service_account, "web");
        }
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 1, "one review");
        // A rejection is remembered too.
        for _ in 0..5 {
            assert!(matches!(
                cache.authenticate("forged").await,
                Err(AuthError::Rejected(_))
            ));
        }
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 2);
        // After the lifetime, the API server is asked again.
        tokio::time::sleep(Duration::from_millis(350)).await;
        cache.authenticate("web").await.unwrap();
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unavailable_is_not_remembered_and_the_size_is_bounded() {
        let cache = CachedAuthenticator::with_limits(Slow::default(), Duration::from_secs(60), 2);
        for _ in 0..3 {
            assert!(matches!(
                cache.authenticate("down").await,
                Err(AuthError::Unavailable(_))
            ));
        }
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 3, "asked every time");
        assert!(cache.is_empty());
        cache.authenticate("web").await.unwrap();
        let _ = cache.authenticate("a").await;
        // Full: a third token is reviewed but not kept.
        let _ = cache.authenticate("b").await;
        let _ = cache.authenticate("b").await;
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 3 + 2 + 2);
        cache.authenticate("web").await.unwrap();
        assert_eq!(cache.inner.0.load(Ordering::SeqCst), 7, "still cached");
    }
}
