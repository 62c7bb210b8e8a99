//! The per-profile part of the template context, cached: serialising the profile and the
//! install settings dominated the cost of rendering a script. The cache knows nothing of what
//! it holds; `render` builds the contexts and the `Catalog` owns the cache, so that a reload
//! starts empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tera::Context;

/// Base URLs can come from a client's Host header, so the number of distinct keys is not ours to
/// choose. A site has a handful of profiles × base URLs × 2 platforms; this is far above that.
pub const PROFILE_CONTEXTS_MAX: usize = 1024;

/// (profile name, base URL, platform): everything the shared part of a host's context depends on,
/// given the `Site` the cache belongs to.
type ProfileKey = (String, String, String);

/// The part of the host context that is the same for every host of a profile: serialising the
/// profile and the install settings dominated the cost of rendering a script.
/// Lives in the `Catalog`, so that a reload (a new catalog) starts with an empty cache and no
/// entry can outlive the profiles and settings it was built from.
#[derive(Default)]
pub struct ProfileContexts {
    // `Arc` so that a hit holds the lock only for a refcount bump, not a deep clone.
    map: Mutex<HashMap<ProfileKey, Arc<SharedContext>>>,
}

/// One profile's shared context, and copies of it that finished renders handed back: a render
/// overwrites the same per-request keys in a copy instead of deep-cloning the whole context
/// (the clone and its drop were a tenth of a rendered request's CPU).
pub struct SharedContext {
    base: Context,
    spare: Mutex<Vec<Context>>,
}

/// Copies kept per entry: one per thread that renders at the same moment is all that is reused.
const SPARE_CONTEXTS: usize = 8;

impl SharedContext {
    pub fn take(&self) -> Context {
        let spare = self.spare.lock().ok().and_then(|mut v| v.pop());
        spare.unwrap_or_else(|| self.base.clone())
    }

    /// Only copies whose keys are the base's plus the per-request ones come back here, so a
    /// reused copy is exactly a fresh clone with those keys set again.
    pub fn give_back(&self, ctx: Context) {
        if let Ok(mut v) = self.spare.lock() {
            if v.len() < SPARE_CONTEXTS {
                v.push(ctx);
            }
        }
    }
}

impl std::fmt::Debug for ProfileContexts {
    // The contexts themselves would swamp any `Debug` of the site.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.map.lock().map(|m| m.len()).ok();
        f.debug_struct("ProfileContexts")
            .field("len", &len)
            .finish()
    }
}

impl ProfileContexts {
    /// The shared context of (profile, base URL, platform), built by `build` on a miss; `None`
    /// when the lock is poisoned (a poisoned lock only costs the cache, never the request).
    pub fn get_or_build(
        &self,
        profile: &str,
        base_url: &str,
        platform: &str,
        build: impl FnOnce() -> Context,
    ) -> Option<Arc<SharedContext>> {
        let key = (
            profile.to_string(),
            base_url.to_string(),
            platform.to_string(),
        );
        // A poisoned lock only costs the cache, never the request.
        let hit = self.map.lock().ok()?.get(&key).cloned();
        if hit.is_some() {
            return hit;
        }
        let shared = Arc::new(SharedContext {
            base: build(),
            spare: Mutex::new(Vec::new()),
        });
        let evicted = match self.map.lock() {
            Ok(mut m) => {
                // Clearing rather than refusing inserts: a flood of made-up Host headers must not
                // leave the site's real base URLs uncached until the next reload.
                let evicted = if m.len() >= PROFILE_CONTEXTS_MAX && !m.contains_key(&key) {
                    std::mem::take(&mut *m)
                } else {
                    HashMap::new()
                };
                m.insert(key, shared.clone());
                evicted
            }
            Err(_) => HashMap::new(),
        };
        // Dropped outside the lock: freeing a thousand contexts should not stall other renders.
        drop(evicted);
        Some(shared)
    }

    #[cfg(test)]
    #[allow(clippy::len_without_is_empty)] // a test's view of the cache's size, nothing more
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// The lock itself, for the test that poisons it.
    #[cfg(test)]
    pub fn poison_for_test(&self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _guard = self.map.lock();
            panic!("poisoning the profile context cache on purpose");
        }));
        assert!(self.map.is_poisoned());
    }
}
