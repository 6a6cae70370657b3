//! Identity and access for the admin APIs (Cloud IoT, Pub/Sub, Ferrocore's own), as IoT Core had
//! it: who a caller is, and whether it may do what it asks.
//!
//! **Who** ([`Iam::authenticate`]) comes from the `Authorization: Bearer` value, one of:
//! * the admin token ([`AdminToken`]): the owner of everything;
//! * an API token (`fct_…`) the operator created with `ferrocore tokens create`: a principal
//!   (an IAM member string) with one role on a project or on one registry ([`tokens`]);
//! * an access token (`fca.…`) that `POST /token` issued for a service account's key
//!   ([`access`]), in exchange for an RFC 7523 JWT-bearer assertion ([`assertion`]);
//! * a self-signed JWT (Google's AIP-4111) signed with a service account's key, as Google's GAPIC
//!   and Pub/Sub clients send for service-account credentials ([`assertion`]).
//!
//! A service account ([`service_accounts`]) holds roles on its project or on one registry, and has
//! RSA keys whose private halves are handed out once in Google's key-file format.
//!
//! **What** ([`Iam::check`]): a principal holds a permission on a resource when one of its own
//! grants covers the resource (a project grant covers everything in the project; a registry grant
//! the registry and its devices) with a role that includes the permission ([`roles`]), or when
//! the resource's IAM policy binds the principal's member (or `allAuthenticatedUsers`) to such a
//! role. A call without the permission gets PERMISSION_DENIED, also when the resource does not
//! exist, so that a caller learns nothing about resources it may not see.
//!
//! Everything is kept in the store ([`ferrocore_store::IamStore`]) and mirrored in memory, so that
//! a request's authentication costs a hash lookup (an HMAC for access tokens, one RSA verify per
//! distinct self-signed JWT); every change through [`Iam`] updates the mirror before it returns,
//! so a revoked token or deleted account is refused at once.

pub mod access;
pub mod admin;
pub mod assertion;
mod b64;
pub mod policy;
pub mod roles;
pub mod service_accounts;
mod state;
pub mod tokens;

pub use admin::AdminToken;

use aws_lc_rs::hmac;
use ferrocore_core::clock::Clock;
use ferrocore_core::error::Code;
use ferrocore_core::{Error, Result};
use ferrocore_model::RegistryName;
use ferrocore_model::pubsub::{IamPolicy, SubscriptionName, TopicName};
use ferrocore_store::{IamStore, PubsubStore};
use state::{Account, CachedJwt, State, TokenEntry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The admin token: every permission on everything, and the management of identities.
    Owner,
    Principal(Arc<Principal>),
}

/// A caller other than the owner: its member string and its own grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The IAM member, e.g. `serviceAccount:ingest@p.iam.gserviceaccount.com`; policy bindings
    /// naming exactly this string apply to it.
    pub member: String,
    pub grants: Vec<Grant>,
}

/// A role held on a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub role: String,
    pub scope: Scope,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `projects/P` and everything in it; the project id.
    Project(String),
    /// One registry and its devices; the registry's full name.
    Registry(String),
}

/// What a permission is checked on.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// A project id: creating and listing registries, topics and subscriptions.
    Project(&'a str),
    /// A registry, for calls on it or on its devices.
    Registry(&'a RegistryName),
    Topic(&'a TopicName),
    Subscription(&'a SubscriptionName),
}

/// Why a bearer value was not accepted. The text is safe to show to the caller: it never repeats
/// the credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// No `Authorization` header, or not a bearer one.
    Missing,
    /// A credential that is unknown, revoked, expired or forged, with a short reason.
    Invalid(&'static str),
}

/// The one identity-and-access service, shared by every listener. Cheap to clone.
#[derive(Clone)]
pub struct Iam {
    inner: Arc<Inner>,
}

struct Inner {
    admin: AdminToken,
    store: Arc<dyn IamStore>,
    policies: Arc<dyn PubsubStore>,
    clock: Arc<dyn Clock>,
    /// Signs and checks access tokens.
    hmac: hmac::Key,
    state: RwLock<State>,
    /// Self-signed JWTs that verified, by SHA-256 of the token.
    jwt_cache: Mutex<HashMap<[u8; 32], CachedJwt>>,
    /// See [`Iam::on_change`].
    on_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// Tokens and service accounts with their keys, as the store has them.
async fn load_state(store: &dyn IamStore) -> Result<State> {
    let mut state = State::default();
    for record in store.list_api_tokens().await.map_err(storage)? {
        state.tokens.insert(record.hash, TokenEntry::new(record));
    }
    for record in store.list_service_accounts().await.map_err(storage)? {
        state.accounts.insert(record.email.clone(), Account::new(record));
    }
    for key in store.list_service_account_keys().await.map_err(storage)? {
        // A key whose account is gone cannot be used; the store deletes them together anyway.
        if let Some(account) = state.accounts.get_mut(&key.email) {
            account.add_key(key);
        }
    }
    Ok(state)
}

/// The longest bearer value looked at, in bytes; longer ones are refused before any decoding.
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;

/// The only grant type `POST /token` accepts (RFC 7523).
pub const JWT_BEARER_GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// What `POST /token` answers for a good assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub access_token: String,
    pub expires_in: u64,
}

/// An RFC 6749 §5.2 error: `error` is the code (`invalid_request`, `invalid_grant`,
/// `unsupported_grant_type`), `description` a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub error: &'static str,
    pub description: String,
}

impl Iam {
    /// Loads tokens and service accounts into memory, and the access-token signing secret (made and
    /// stored on first start). `policies` is where resource policies live (the same store object
    /// in practice).
    pub async fn open(
        admin: AdminToken,
        store: Arc<dyn IamStore>,
        policies: Arc<dyn PubsubStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self> {
        let state = load_state(store.as_ref()).await?;
        let candidate: [u8; 32] = rand::random();
        let secret = store.server_secret(access::SECRET_NAME, &candidate).await.map_err(storage)?;
        if secret.len() < 32 {
            return Err(Error::new(Code::Internal, "The stored access-token secret is too short."));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                admin,
                store,
                policies,
                clock,
                hmac: hmac::Key::new(hmac::HMAC_SHA256, &secret),
                state: RwLock::new(state),
                jwt_cache: Mutex::new(HashMap::new()),
                on_change: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Calls `notify` after each change of tokens or service accounts made through this
    /// instance (a cluster tells the other nodes to [`Iam::reload`]). Set once, at start.
    pub fn on_change(&self, notify: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.on_change.set(Box::new(notify));
    }

    /// Reads tokens and service accounts from the store again (another node changed them), and
    /// forgets the self-signed JWTs verified so far.
    pub async fn reload(&self) -> Result<()> {
        let state = load_state(self.inner.store.as_ref()).await?;
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        self.jwt_cache().clear();
        Ok(())
    }

    /// The admin token this server accepts.
    pub fn admin(&self) -> &AdminToken {
        &self.inner.admin
    }

    /// Who presents `authorization` (the raw header value).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> std::result::Result<Caller, AuthError> {
        let Some(header) = authorization else { return Err(AuthError::Missing) };
        // First, and exactly as cheap as before identities existed.
        if self.inner.admin.accepts(Some(header)) {
            return Ok(Caller::Owner);
        }
        let Some(value) = admin::strip_bearer(header) else { return Err(AuthError::Missing) };
        if value.is_empty() {
            return Err(AuthError::Invalid("The bearer token is empty."));
        }
        if value.len() > MAX_CREDENTIAL_LEN {
            return Err(AuthError::Invalid("The bearer token is too long."));
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(AuthError::Invalid("The bearer token is not valid."));
        };
        let principal = if value.starts_with(tokens::PREFIX) {
            let hash = b64::sha256(value.as_bytes());
            self.read()
                .tokens
                .get(&hash)
                .map(|t| t.principal.clone())
                .ok_or("The API token is not valid or was revoked.")
        } else if value.starts_with(access::PREFIX) {
            self.access_token_principal(value)
        } else if assertion::looks_like_jwt(value) {
            self.self_signed_jwt_principal(value)
        } else {
            Err("The bearer token is not valid.")
        };
        principal.map(Caller::Principal).map_err(AuthError::Invalid)
    }

    /// `Ok` when `caller` holds `permission` on `resource`; PERMISSION_DENIED otherwise, with
    /// Google's wording: "Permission 'P' denied on resource 'R' (or it may not exist)."
    pub async fn check(&self, caller: &Caller, permission: &str, resource: Resource<'_>) -> Result<()> {
        let Caller::Principal(principal) = caller else { return Ok(()) };
        let mut policy = None;
        if self.allowed(principal, permission, resource, &mut policy).await? {
            Ok(())
        } else {
            Err(Error::new(
                Code::PermissionDenied,
                format!("Permission '{permission}' denied on resource '{}' (or it may not exist).", resource.name()),
            ))
        }
    }

    /// The subset of `permissions` that `caller` holds on `resource`, in the order asked
    /// (`testIamPermissions`). A permission no role grants is INVALID_ARGUMENT.
    pub async fn held(&self, caller: &Caller, resource: Resource<'_>, permissions: &[String]) -> Result<Vec<String>> {
        if let Some(bad) = permissions.iter().find(|p| !roles::is_permission(p)) {
            return Err(Error::invalid(
                "permissions",
                format!("Invalid permission '{}'.", ferrocore_model::ids::printable(bad)),
            ));
        }
        let Caller::Principal(principal) = caller else { return Ok(permissions.to_vec()) };
        // The resource's policy is read at most once for all the permissions.
        let mut policy = None;
        let mut held = Vec::new();
        for p in permissions {
            if self.allowed(principal, p, resource, &mut policy).await? {
                held.push(p.clone());
            }
        }
        Ok(held)
    }

    // --- policies on registries (topics and subscriptions keep theirs through the Pub/Sub engine,
    // --- in the same table) ------------------------------------------------------------------

    /// The registry's policy; an empty one (etag `ACAB`) when none was set.
    pub async fn get_registry_policy(&self, registry: &RegistryName) -> Result<IamPolicy> {
        let policy = self.inner.policies.get_iam_policy(&registry.to_string()).await.map_err(storage)?;
        Ok(policy.unwrap_or_else(policy::empty_policy))
    }

    /// Replaces the registry's policy: roles must be predefined ones ([`roles::ROLES`]), members
    /// well-formed; a non-empty etag that is not the current one is ABORTED. Returns the stored
    /// policy with its new etag.
    pub async fn set_registry_policy(&self, registry: &RegistryName, policy: IamPolicy) -> Result<IamPolicy> {
        policy::check_registry_bindings(&policy)?;
        let current = self.get_registry_policy(registry).await?;
        policy::check_etag(&policy.etag, &current.etag)?;
        // Google answers version 1 for a policy written without one.
        let version = if policy.version == 0 { 1 } else { policy.version };
        let stored = IamPolicy { version, bindings: policy.bindings, etag: policy::new_etag() };
        self.inner.policies.set_iam_policy(&registry.to_string(), &stored).await.map_err(storage)?;
        Ok(stored)
    }

    /// Forgets a registry's policy (the registry was deleted, or is being created afresh).
    pub async fn forget_registry_policy(&self, registry: &RegistryName) -> Result<()> {
        self.inner.policies.delete_iam_policy(&registry.to_string()).await.map_err(storage)
    }

    // --- the token endpoint --------------------------------------------------------------------

    /// `POST /token`: `grant_type` must be `urn:ietf:params:oauth:grant-type:jwt-bearer`, and
    /// `assertion` a JWT signed with a key of a live service account, `aud` one of `token_uri`
    /// (this server's own `/token` URL as the request reached it) or Google's token URLs.
    pub fn exchange(
        &self,
        grant_type: &str,
        assertion: &str,
        token_uri: &str,
    ) -> std::result::Result<AccessToken, OAuthError> {
        let error = |error, description: &str| OAuthError { error, description: description.to_owned() };
        if grant_type != JWT_BEARER_GRANT_TYPE {
            return Err(error(
                "unsupported_grant_type",
                "Only the grant type urn:ietf:params:oauth:grant-type:jwt-bearer is supported.",
            ));
        }
        if assertion.is_empty() {
            return Err(error("invalid_request", "The assertion is missing."));
        }
        let now = self.now();
        let verified = assertion::verify(
            assertion,
            |email| self.read().verifiers(email),
            now,
            assertion::Audience::TokenEndpoint(token_uri),
        )
        .map_err(|reason| error("invalid_grant", reason))?;
        // The account or key may have been deleted while the signature was being checked.
        if self.read().live_principal(&verified.email, &verified.key_id).is_none() {
            return Err(error("invalid_grant", "The service account or its key no longer exists."));
        }
        let claims = access::Claims {
            email: verified.email,
            key_id: verified.key_id,
            exp: now.saturating_add(access::LIFETIME_SECONDS as i64),
        };
        Ok(AccessToken { access_token: access::issue(&self.inner.hmac, &claims), expires_in: access::LIFETIME_SECONDS })
    }

    pub fn tokens(&self) -> tokens::Tokens<'_> {
        tokens::Tokens(self)
    }

    pub fn service_accounts(&self) -> service_accounts::ServiceAccounts<'_> {
        service_accounts::ServiceAccounts(self)
    }
}

// --- private helpers -------------------------------------------------------------------------

impl Iam {
    /// Now, in unix seconds.
    fn now(&self) -> i64 {
        self.inner.clock.now().unix_seconds()
    }

    pub(crate) fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A panic while the lock was held cannot leave the maps half-changed (each change is one
        // insert or remove), so a poisoned lock is still good to use.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The mirror, to change it. Every caller changes it right after the store, so this is also
    /// where other nodes are told (they reload from the store, which has the change already).
    pub(crate) fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        if let Some(notify) = self.inner.on_change.get() {
            notify();
        }
        self.inner.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn jwt_cache(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], CachedJwt>> {
        self.inner.jwt_cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn store(&self) -> &dyn IamStore {
        self.inner.store.as_ref()
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    fn access_token_principal(&self, token: &str) -> std::result::Result<Arc<Principal>, &'static str> {
        let claims = access::open(&self.inner.hmac, token)?;
        if claims.exp <= self.now() {
            return Err("The access token has expired.");
        }
        self.read()
            .live_principal(&claims.email, &claims.key_id)
            .ok_or("The service account or its key no longer exists.")
    }

    fn self_signed_jwt_principal(&self, token: &str) -> std::result::Result<Arc<Principal>, &'static str> {
        const GONE: &str = "The service account or its key no longer exists.";
        let now = self.now();
        let hash = b64::sha256(token.as_bytes());
        let cached = self.jwt_cache().get(&hash).cloned();
        if let Some(c) = cached {
            if c.usable_until < now {
                self.jwt_cache().remove(&hash);
                return Err("The JWT has expired.");
            }
            // Verified before, but the account or key may have been deleted since.
            return self.read().live_principal(&c.email, &c.key_id).ok_or(GONE);
        }
        let verified = assertion::verify(token, |email| self.read().verifiers(email), now, assertion::Audience::Api)?;
        let principal = self.read().live_principal(&verified.email, &verified.key_id).ok_or(GONE)?;
        let entry = CachedJwt {
            email: verified.email,
            key_id: verified.key_id,
            usable_until: verified.expires_at.saturating_add(assertion::SKEW_SECONDS),
        };
        state::remember(&mut self.jwt_cache(), hash, entry, now);
        Ok(principal)
    }

    /// Whether `principal` holds `permission` on `resource`: by its own grants, or by the
    /// resource's policy (read into `policy` on first need, so that several permissions on one
    /// resource cost one read).
    async fn allowed(
        &self,
        principal: &Principal,
        permission: &str,
        resource: Resource<'_>,
        policy: &mut Option<Option<IamPolicy>>,
    ) -> Result<bool> {
        if principal.grants.iter().any(|g| g.scope.covers(resource) && roles::grants(&g.role, permission)) {
            return Ok(true);
        }
        let Some(key) = resource.policy_key() else { return Ok(false) };
        if policy.is_none() {
            *policy = Some(self.inner.policies.get_iam_policy(&key).await.map_err(storage)?);
        }
        Ok(policy.as_ref().and_then(Option::as_ref).is_some_and(|p| policy::binds(p, &principal.member, permission)))
    }
}

impl Scope {
    /// Whether a grant on this scope applies to `resource`: a project grant to everything in the
    /// project, a registry grant to that registry (and so its devices) only.
    pub fn covers(&self, resource: Resource<'_>) -> bool {
        match self {
            Scope::Project(p) => resource.project() == p,
            Scope::Registry(name) => matches!(resource, Resource::Registry(r) if is_named(r, name)),
        }
    }
}

/// Whether `name` is `r`'s full name, compared without formatting it (this runs on every check).
fn is_named(r: &RegistryName, name: &str) -> bool {
    let mut parts = name.split('/');
    let mut next = || parts.next().unwrap_or_default();
    next() == "projects"
        && next() == r.parent.project.as_str()
        && next() == "locations"
        && next() == r.parent.location.as_str()
        && next() == "registries"
        && next() == r.registry.as_str()
        && parts.next().is_none()
}

impl Resource<'_> {
    /// The project the resource is in.
    pub fn project(&self) -> &str {
        match self {
            Resource::Project(p) => p,
            Resource::Registry(r) => r.parent.project.as_str(),
            Resource::Topic(t) => t.project(),
            Resource::Subscription(s) => s.project(),
        }
    }

    /// The resource's name as errors show it: `projects/P` for a project, else the full name.
    pub fn name(&self) -> String {
        match self {
            Resource::Project(p) => format!("projects/{p}"),
            Resource::Registry(r) => r.to_string(),
            Resource::Topic(t) => t.to_string(),
            Resource::Subscription(s) => s.to_string(),
        }
    }

    /// Where the resource's IAM policy is kept; a project has none.
    fn policy_key(&self) -> Option<String> {
        match self {
            Resource::Project(_) => None,
            _ => Some(self.name()),
        }
    }
}

pub(crate) fn storage(e: ferrocore_store::StoreError) -> Error {
    ferrocore_core::error::storage(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(s: &str) -> RegistryName {
        RegistryName::parse_field("name", s).unwrap()
    }

    #[test]
    fn scopes_cover_their_project_or_registry() {
        let fleet = registry("projects/p/locations/l/registries/fleet");
        let other = registry("projects/p/locations/l/registries/other");
        let elsewhere = registry("projects/p/locations/m/registries/fleet");
        let topic = TopicName::new("p", "events").unwrap();
        let sub = SubscriptionName::new("p", "reader").unwrap();
        let project = Scope::Project("p".into());
        for r in
            [Resource::Project("p"), Resource::Registry(&fleet), Resource::Topic(&topic), Resource::Subscription(&sub)]
        {
            assert!(project.covers(r), "{}", r.name());
            assert!(!Scope::Project("q".into()).covers(r), "{}", r.name());
        }
        let scoped = Scope::Registry(fleet.to_string());
        assert!(scoped.covers(Resource::Registry(&fleet)));
        for r in [
            Resource::Registry(&other),
            Resource::Registry(&elsewhere),
            Resource::Project("p"),
            Resource::Topic(&topic),
            Resource::Subscription(&sub),
        ] {
            assert!(!scoped.covers(r), "{}", r.name());
        }
        assert!(!Scope::Registry(format!("{fleet}/devices/d")).covers(Resource::Registry(&fleet)));
        assert!(!Scope::Registry("projects/p".into()).covers(Resource::Registry(&fleet)));
        assert_eq!(Resource::Project("p").name(), "projects/p");
    }
}
