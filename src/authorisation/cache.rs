//! DNS answers for SPF, kept for their TTL, and the earliest expiry of the answers one
//! evaluation used: an SPF result holds exactly as long as the records it was made of,
//! so it is made once per (domain, IP) per TTL, not once per message.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use mail_auth::ResolverCache;

/// Entries kept at most per record type; past it, expired ones go, then all.
const MAX_ENTRIES: usize = 50_000;

/// One record type's answers, each until its TTL runs out.
pub(super) struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    pub(super) fn new() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get_until<Q>(&self, key: &Q) -> Option<(V, Instant)>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.lock();
        let (value, until) = map.get(key)?;
        (Instant::now() < *until).then(|| (value.clone(), *until))
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    fn put(&self, key: K, value: V, until: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_ENTRIES {
            let now = Instant::now();
            map.retain(|_, (_, u)| *u > now);
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key, (value, until));
    }
}

/// A view of a [`TtlCache`] for one evaluation: every answer it reads or stores lowers
/// `earliest` to that answer's expiry.
pub(super) struct Tracked<'a, K, V> {
    pub(super) cache: &'a TtlCache<K, V>,
    pub(super) earliest: &'a Mutex<Option<Instant>>,
}

impl<K, V> Tracked<'_, K, V> {
    fn saw(&self, until: Instant) {
        let mut e = self.earliest.lock().unwrap_or_else(|e| e.into_inner());
        *e = Some(e.map_or(until, |x| x.min(until)));
    }
}

impl<K: Hash + Eq, V: Clone> ResolverCache<K, V> for Tracked<'_, K, V> {
    fn get<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (value, until) = self.cache.get_until(name)?;
        self.saw(until);
        Some(value)
    }

    fn remove<Q>(&self, name: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.cache.lock().remove(name).map(|(v, _)| v)
    }

    fn insert(&self, key: K, value: V, valid_until: Instant) {
        self.saw(valid_until);
        self.cache.put(key, value, valid_until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_evaluation_learns_the_earliest_expiry_of_what_it_read() {
        let cache: TtlCache<Box<str>, u32> = TtlCache::new();
        let earliest = Mutex::new(None);
        let view = Tracked {
            cache: &cache,
            earliest: &earliest,
        };
        let now = Instant::now();
        view.insert("a".into(), 1, now + Duration::from_secs(300));
        view.insert("b".into(), 2, now + Duration::from_secs(60));
        assert_eq!(
            *earliest.lock().unwrap(),
            Some(now + Duration::from_secs(60))
        );
        // A second evaluation that only reads the cache learns the same expiry.
        let again = Mutex::new(None);
        let view = Tracked {
            cache: &cache,
            earliest: &again,
        };
        assert_eq!(view.get("a"), Some(1));
        assert_eq!(*again.lock().unwrap(), Some(now + Duration::from_secs(300)));
        // An answer past its TTL is gone.
        view.insert("c".into(), 3, now);
        assert_eq!(view.get("c"), None);
    }
}
