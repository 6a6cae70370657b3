//! The identity-and-access service end to end on the SQLite store: every kind of credential,
//! their refusal once revoked, deleted or expired, grants and policies, and Google-format key files
//! whose private key signs JWTs the server accepts.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrocore_core::clock::ManualClock;
use ferrocore_core::error::Code;
use ferrocore_device::DeviceKey;
use ferrocore_iam::service_accounts::NewServiceAccount;
use ferrocore_iam::tokens::NewToken;
use ferrocore_iam::{AdminToken, AuthError, Caller, Iam, Principal, Resource};
use ferrocore_model::pubsub::{IamBinding, IamPolicy, SubscriptionName, TopicName};
use ferrocore_model::{RegistryName, Timestamp};
use ferrocore_store::PubsubStore;
use ferrocore_store::sqlite::SqliteStore;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "admin-token-0123456789";
const NOW: i64 = 1_800_000_000;
const TOKEN_URI: &str = "https://iot.example.com/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

struct Env {
    dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    iam: Iam,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("db.sqlite")).await.unwrap());
    let clock = Arc::new(ManualClock::new(Timestamp::from_unix_seconds(NOW)));
    let iam = open(&store, &clock).await;
    Env { dir, store, clock, iam }
}

async fn open(store: &Arc<SqliteStore>, clock: &Arc<ManualClock>) -> Iam {
    Iam::open(AdminToken::new(ADMIN.into()).unwrap(), store.clone(), store.clone(), clock.clone()).await.unwrap()
}

fn bearer(value: &str) -> Vec<u8> {
    format!("Bearer {value}").into_bytes()
}

fn auth(iam: &Iam, value: &str) -> Result<Caller, AuthError> {
    iam.authenticate(Some(&bearer(value)))
}

fn principal(c: Result<Caller, AuthError>) -> Arc<Principal> {
    match c {
        Ok(Caller::Principal(p)) => p,
        other => panic!("expected a principal, got {other:?}"),
    }
}

fn refused(c: Result<Caller, AuthError>) -> &'static str {
    match c {
        Err(AuthError::Invalid(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn registry(project: &str, id: &str) -> RegistryName {
    RegistryName::parse_field("name", &format!("projects/{project}/locations/us-central1/registries/{id}")).unwrap()
}

fn account(id: &str, roles: &[&str], registry: Option<RegistryName>) -> NewServiceAccount {
    NewServiceAccount {
        project: "p".into(),
        account_id: id.into(),
        display_name: "Back end".into(),
        roles: roles.iter().map(|r| (*r).into()).collect(),
        registry,
    }
}

/// A key file's private key, ready to sign.
fn signer(key_file: &str) -> (DeviceKey, String, String) {
    let file: Value = serde_json::from_str(key_file).unwrap();
    let key = DeviceKey::from_pem(file["private_key"].as_str().unwrap()).unwrap();
    (key, file["client_email"].as_str().unwrap().into(), file["private_key_id"].as_str().unwrap().into())
}

fn sign(key: &DeviceKey, header: &Value, claims: &Value) -> String {
    key.sign(header, claims).unwrap()
}

/// A service account with one key: (email, key id, key).
async fn account_with_key(env: &Env, id: &str, roles: &[&str]) -> (String, String, DeviceKey) {
    let a = env.iam.service_accounts().create(account(id, roles, None)).await.unwrap();
    let new = env.iam.service_accounts().create_key("p", &a.email, TOKEN_URI).await.unwrap();
    let (key, email, kid) = signer(&new.key_file);
    assert_eq!((email.as_str(), kid.as_str()), (a.email.as_str(), new.record.key_id.as_str()));
    (email, kid, key)
}

fn self_signed(key: &DeviceKey, email: &str, kid: &str, iat: i64) -> String {
    sign(
        key,
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        &json!({"iss": email, "sub": email, "aud": "https://cloudiot.googleapis.com/", "iat": iat, "exp": iat + 3600}),
    )
}

fn assertion(key: &DeviceKey, email: &str, kid: &str, aud: &str) -> String {
    sign(
        key,
        &json!({"alg": "RS256", "typ": "JWT", "kid": kid}),
        &json!({"iss": email, "aud": aud, "scope": "https://www.googleapis.com/auth/cloud-platform",
                "iat": NOW, "exp": NOW + 3600}),
    )
}

#[tokio::test]
async fn the_admin_token_owns_everything_and_missing_credentials_are_missing() {
    let env = env().await;
    assert!(matches!(auth(&env.iam, ADMIN), Ok(Caller::Owner)));
    assert!(matches!(env.iam.authenticate(Some(format!("bearer {ADMIN}").as_bytes())), Ok(Caller::Owner)));
    assert_eq!(env.iam.authenticate(None).unwrap_err(), AuthError::Missing);
    assert_eq!(env.iam.authenticate(Some(format!("Basic {ADMIN}").as_bytes())).unwrap_err(), AuthError::Missing);
    for junk in ["", "nope", "admin-token-012345678", "fct_", "fca.", "a.b.c", &"x".repeat(9000)] {
        refused(auth(&env.iam, junk));
    }
    assert!(matches!(env.iam.authenticate(Some(b"Bearer \xff\xfe")), Err(AuthError::Invalid(_))));
    let r = registry("p", "fleet");
    env.iam.check(&Caller::Owner, "cloudiot.registries.setIamPolicy", Resource::Registry(&r)).await.unwrap();
    let asked = vec!["cloudiot.devices.get".to_string(), "pubsub.topics.publish".to_string()];
    assert_eq!(env.iam.held(&Caller::Owner, Resource::Registry(&r), &asked).await.unwrap(), asked);
}

#[tokio::test]
async fn api_tokens_grant_their_role_on_their_scope_until_revoked() {
    let env = env().await;
    let fleet = registry("p", "fleet");
    let other = registry("p", "other");
    let (record, token) = env
        .iam
        .tokens()
        .create(NewToken {
            principal: "serviceAccount:ingest@example.iam".into(),
            role: "roles/cloudiot.provisioner".into(),
            project: "p".into(),
            registry: Some(fleet.clone()),
        })
        .await
        .unwrap();
    assert!(token.starts_with("fct_") && token.len() == 4 + 43, "{token}");
    assert!(record.id.len() == 16 && record.id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(record.registry.as_deref(), Some(fleet.to_string().as_str()));
    let caller = Caller::Principal(principal(auth(&env.iam, &token)));
    if let Caller::Principal(p) = &caller {
        assert_eq!(p.member, "serviceAccount:ingest@example.iam");
    }
    env.iam.check(&caller, "cloudiot.devices.delete", Resource::Registry(&fleet)).await.unwrap();
    // Not beyond the role.
    let e = env.iam.check(&caller, "cloudiot.registries.delete", Resource::Registry(&fleet)).await.unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    assert_eq!(
        e.message,
        "Permission 'cloudiot.registries.delete' denied on resource \
         'projects/p/locations/us-central1/registries/fleet' (or it may not exist)."
    );
    // Not on another registry, nor on the project.
    let e = env.iam.check(&caller, "cloudiot.devices.get", Resource::Registry(&other)).await.unwrap_err();
    assert_eq!(e.code, Code::PermissionDenied);
    assert!(env.iam.check(&caller, "cloudiot.registries.list", Resource::Project("p")).await.is_err());
    let topic = TopicName::new("p", "events").unwrap();
    assert!(env.iam.check(&caller, "pubsub.topics.get", Resource::Topic(&topic)).await.is_err());

    // A project-wide token of another project.
    let (_, other_project) = env
        .iam
        .tokens()
        .create(NewToken {
            principal: "user:ana@example.com".into(),
            role: "roles/pubsub.editor".into(),
            project: "q".into(),
            registry: None,
        })
        .await
        .unwrap();
    let ana = Caller::Principal(principal(auth(&env.iam, &other_project)));
    let q_topic = TopicName::new("q", "events").unwrap();
    let q_sub = SubscriptionName::new("q", "reader").unwrap();
    env.iam.check(&ana, "pubsub.topics.create", Resource::Project("q")).await.unwrap();
    env.iam.check(&ana, "pubsub.topics.publish", Resource::Topic(&q_topic)).await.unwrap();
    env.iam.check(&ana, "pubsub.subscriptions.consume", Resource::Subscription(&q_sub)).await.unwrap();
    assert!(env.iam.check(&ana, "pubsub.topics.publish", Resource::Topic(&topic)).await.is_err());
    assert!(env.iam.check(&ana, "pubsub.topics.create", Resource::Project("p")).await.is_err());
    assert!(env.iam.check(&ana, "pubsub.topics.setIamPolicy", Resource::Topic(&q_topic)).await.is_err());

    // Listing and revoking, per project.
    assert_eq!(env.iam.tokens().list("p"), vec![record.clone()]);
    assert_eq!(env.iam.tokens().list("q").len(), 1);
    assert_eq!(env.iam.tokens().revoke("q", &record.id).await.unwrap_err().code, Code::NotFound);
    env.iam.tokens().revoke("p", &record.id).await.unwrap();
    refused(auth(&env.iam, &token));
    assert!(env.iam.tokens().list("p").is_empty());
    let e = env.iam.tokens().revoke("p", &record.id).await.unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, format!("Token '{}' was not found.", record.id).as_str())
    );

    // Tokens survive a restart; revoked ones stay revoked.
    let reopened = open(&env.store, &env.clock).await;
    principal(auth(&reopened, &other_project));
    refused(auth(&reopened, &token));
}

#[tokio::test]
async fn token_creation_validates_its_input() {
    let env = env().await;
    let new = |principal: &str, role: &str, registry: Option<RegistryName>| NewToken {
        principal: principal.into(),
        role: role.into(),
        project: "p".into(),
        registry,
    };
    let cases = [
        (new("ana@example.com", "roles/cloudiot.viewer", None), "principal"),
        (new("user:", "roles/cloudiot.viewer", None), "principal"),
        (new("user:a b", "roles/cloudiot.viewer", None), "principal"),
        (new("allUsers", "roles/cloudiot.viewer", None), "principal"),
        (new("user:a@b", "roles/owner", None), "role"),
        (new("user:a@b", "roles/cloudiot.viewer", Some(registry("q", "fleet"))), "registry"),
        (NewToken { project: String::new(), ..new("user:a@b", "roles/cloudiot.viewer", None) }, "project"),
    ];
    for (bad, field) in cases {
        let e = env.iam.tokens().create(bad).await.unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some(field)));
    }
}

#[tokio::test]
async fn service_accounts_validate_and_list() {
    let env = env().await;
    let sa = env.iam.service_accounts();
    let a = sa.create(account("backend", &["roles/cloudiot.viewer"], None)).await.unwrap();
    assert_eq!(a.email, "backend@p.iam.gserviceaccount.com");
    assert!(a.unique_id.len() == 21 && a.unique_id.bytes().all(|b| b.is_ascii_digit()));
    assert_eq!(
        sa.create(account("backend", &["roles/cloudiot.viewer"], None)).await.unwrap_err().code,
        Code::AlreadyExists
    );
    for (bad, field) in [
        (account("bad_id", &["roles/cloudiot.viewer"], None), "accountId"),
        (account("short", &["roles/cloudiot.viewer"], None), "accountId"),
        (account("no-roles", &[], None), "roles"),
        (account("unknown-role", &["roles/editor"], None), "roles"),
        (account("twice-role", &["roles/pubsub.viewer", "roles/pubsub.viewer"], None), "roles"),
        (account("elsewhere", &["roles/pubsub.viewer"], Some(registry("q", "reg1"))), "registry"),
    ] {
        let e = sa.create(bad).await.unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some(field)));
    }
    sa.create(account("another", &["roles/pubsub.viewer"], Some(registry("p", "reg1")))).await.unwrap();
    let emails: Vec<String> = sa.list("p").into_iter().map(|a| a.email).collect();
    assert_eq!(emails, ["another@p.iam.gserviceaccount.com", "backend@p.iam.gserviceaccount.com"]);
    assert!(sa.list("q").is_empty());
    assert_eq!(sa.get("p", &a.email).unwrap(), a);
    let e = sa.get("q", &a.email).unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (Code::NotFound, "Service account backend@p.iam.gserviceaccount.com does not exist.")
    );
    assert_eq!(sa.create_key("q", &a.email, TOKEN_URI).await.unwrap_err().code, Code::NotFound);
    assert_eq!(sa.list_keys("p", "nobody@p.iam.gserviceaccount.com").unwrap_err().code, Code::NotFound);
    assert_eq!(sa.delete("q", &a.email).await.unwrap_err().code, Code::NotFound);
    assert_eq!(sa.delete_key("p", &a.email, "0000").await.unwrap_err().code, Code::NotFound);
    sa.delete("p", &a.email).await.unwrap();
    assert_eq!(sa.get("p", &a.email).unwrap_err().code, Code::NotFound);
    // Accounts survive a restart.
    let reopened = open(&env.store, &env.clock).await;
    assert_eq!(reopened.service_accounts().list("p").len(), 1);
}

#[tokio::test]
async fn the_key_file_is_googles_and_its_key_signs_accepted_jwts() {
    let env = env().await;
    let a = env
        .iam
        .service_accounts()
        .create(account("backend", &["roles/cloudiot.deviceController"], None))
        .await
        .unwrap();
    let new = env.iam.service_accounts().create_key("p", &a.email, TOKEN_URI).await.unwrap();
    assert!(new.key_file.ends_with("}\n"));
    assert!(new.key_file.starts_with("{\n  \"type\": \"service_account\",\n  \"project_id\": \"p\",\n"));
    let file: Value = serde_json::from_str(&new.key_file).unwrap();
    assert_eq!(file.as_object().unwrap().len(), 11);
    // Google's members, in Google's order.
    let positions: Vec<usize> = [
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
        "auth_uri",
        "token_uri",
        "auth_provider_x509_cert_url",
        "client_x509_cert_url",
        "universe_domain",
    ]
    .iter()
    .map(|k| new.key_file.find(&format!("\n  \"{k}\": ")).unwrap_or_else(|| panic!("{k}")))
    .collect();
    assert!(positions.is_sorted(), "{positions:?}");
    assert_eq!(file["private_key_id"], new.record.key_id.as_str());
    assert!(new.record.key_id.len() == 40 && new.record.key_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(file["client_email"], a.email.as_str());
    assert_eq!(file["client_id"], a.unique_id.as_str());
    assert_eq!(file["token_uri"], TOKEN_URI);
    assert_eq!(file["auth_uri"], "https://accounts.google.com/o/oauth2/auth");
    assert_eq!(file["universe_domain"], "googleapis.com");
    assert_eq!(
        file["client_x509_cert_url"],
        "https://www.googleapis.com/robot/v1/metadata/x509/backend%40p.iam.gserviceaccount.com"
    );
    let pem = file["private_key"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n") && pem.ends_with("-----END PRIVATE KEY-----\n"));
    assert!(pem.lines().filter(|l| !l.starts_with("-----")).all(|l| l.len() <= 64));
    assert_eq!(env.iam.service_accounts().list_keys("p", &a.email).unwrap(), vec![new.record.clone()]);

    // Self-signed, as the GAPIC clients do.
    let (key, email, kid) = signer(&new.key_file);
    let jwt = self_signed(&key, &email, &kid, NOW);
    let p = principal(auth(&env.iam, &jwt));
    assert_eq!(p.member, "serviceAccount:backend@p.iam.gserviceaccount.com");
    let r = registry("p", "fleet");
    let caller = Caller::Principal(p);
    env.iam.check(&caller, "cloudiot.devices.sendCommand", Resource::Registry(&r)).await.unwrap();
    assert!(env.iam.check(&caller, "cloudiot.devices.create", Resource::Registry(&r)).await.is_err());
    // Again, from the cache.
    principal(auth(&env.iam, &jwt));

    // Through the token endpoint, as google-auth does.
    for aud in [TOKEN_URI, "https://oauth2.googleapis.com/token"] {
        let granted = env.iam.exchange(JWT_BEARER, &assertion(&key, &email, &kid, aud), TOKEN_URI).unwrap();
        assert_eq!(granted.expires_in, 3600);
        assert!(granted.access_token.starts_with("fca."));
        assert_eq!(principal(auth(&env.iam, &granted.access_token)).member, format!("serviceAccount:{email}"));
    }
}

#[tokio::test]
async fn the_token_endpoint_refuses_bad_requests() {
    let env = env().await;
    let (email, kid, key) = account_with_key(&env, "backend", &["roles/pubsub.viewer"]).await;
    let good = assertion(&key, &email, &kid, TOKEN_URI);
    let e = env.iam.exchange("client_credentials", &good, TOKEN_URI).unwrap_err();
    assert_eq!(e.error, "unsupported_grant_type");
    assert_eq!(env.iam.exchange(JWT_BEARER, "", TOKEN_URI).unwrap_err().error, "invalid_request");
    for bad in [
        assertion(&key, &email, &kid, "https://pubsub.googleapis.com/"),
        assertion(&key, &email, &kid, "https://evil.example.com/token"),
        assertion(&key, &email, "not-a-key", TOKEN_URI),
        assertion(&key, "other@p.iam.gserviceaccount.com", &kid, TOKEN_URI),
        "not.a.jwt".to_string(),
    ] {
        let e = env.iam.exchange(JWT_BEARER, &bad, TOKEN_URI).unwrap_err();
        assert_eq!(e.error, "invalid_grant");
        assert!(!e.description.contains(&bad));
    }
    // A key of another account does not sign for this one.
    let (_, _, other_key) = account_with_key(&env, "someone", &["roles/pubsub.viewer"]).await;
    let forged = assertion(&other_key, &email, &kid, TOKEN_URI);
    assert_eq!(env.iam.exchange(JWT_BEARER, &forged, TOKEN_URI).unwrap_err().error, "invalid_grant");
    refused(auth(&env.iam, &self_signed(&other_key, &email, &kid, NOW)));
    assert!(env.iam.exchange(JWT_BEARER, &good, TOKEN_URI).is_ok());
}

#[tokio::test]
async fn access_tokens_end_with_expiry_tampering_key_or_account_deletion() {
    let env = env().await;
    let (email, kid, key) = account_with_key(&env, "backend", &["roles/pubsub.viewer"]).await;
    let issue =
        || env.iam.exchange(JWT_BEARER, &assertion(&key, &email, &kid, TOKEN_URI), TOKEN_URI).unwrap().access_token;
    let token = issue();
    principal(auth(&env.iam, &token));

    // Tampered: one character of the claims or of the tag changed.
    let dot = token.rfind('.').unwrap();
    for at in [6, dot + 3] {
        let mut bytes = token.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        refused(auth(&env.iam, &String::from_utf8(bytes).unwrap()));
    }
    // Claims re-signed by someone without the server's secret.
    let forged_claims = URL_SAFE_NO_PAD.encode(format!(r#"{{"sub":"{email}","kid":"{kid}","exp":{}}}"#, NOW + 99_999));
    refused(auth(&env.iam, &format!("fca.{forged_claims}{}", &token[dot..])));

    // The secret persists: a restarted server accepts the token.
    let reopened = open(&env.store, &env.clock).await;
    principal(auth(&reopened, &token));

    // Expiry after one hour.
    env.clock.advance(Duration::from_secs(3599));
    principal(auth(&env.iam, &token));
    env.clock.advance(Duration::from_secs(1));
    assert_eq!(refused(auth(&env.iam, &token)), "The access token has expired.");

    // Deleting the key ends its access tokens at once.
    env.clock.set(Timestamp::from_unix_seconds(NOW));
    let token = issue();
    let second = env.iam.service_accounts().create_key("p", &email, TOKEN_URI).await.unwrap();
    env.iam.service_accounts().delete_key("p", &email, &kid).await.unwrap();
    refused(auth(&env.iam, &token));
    assert_eq!(env.iam.service_accounts().list_keys("p", &email).unwrap(), vec![second.record.clone()]);
    // The other key still works, until the account goes.
    let (key2, _, kid2) = signer(&second.key_file);
    let token2 =
        env.iam.exchange(JWT_BEARER, &assertion(&key2, &email, &kid2, TOKEN_URI), TOKEN_URI).unwrap().access_token;
    principal(auth(&env.iam, &token2));
    env.iam.service_accounts().delete("p", &email).await.unwrap();
    refused(auth(&env.iam, &token2));
    assert_eq!(
        env.iam.exchange(JWT_BEARER, &assertion(&key2, &email, &kid2, TOKEN_URI), TOKEN_URI).unwrap_err().error,
        "invalid_grant"
    );
    // Deleted in the store too.
    let reopened = open(&env.store, &env.clock).await;
    refused(auth(&reopened, &token2));
}

#[tokio::test]
async fn self_signed_jwts_obey_the_rules_and_end_with_their_key_or_account() {
    let env = env().await;
    let (email, kid, key) = account_with_key(&env, "backend", &["roles/pubsub.viewer"]).await;
    let h = json!({"alg": "RS256", "kid": kid});
    let claims = |changes: Value| {
        let mut c =
            json!({"iss": email, "sub": email, "aud": "https://pubsub.googleapis.com/", "iat": NOW, "exp": NOW + 3600});
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    principal(auth(&env.iam, &sign(&key, &h, &claims(json!({})))));
    principal(auth(&env.iam, &sign(&key, &json!({"alg": "RS256"}), &claims(json!({})))));
    principal(auth(
        &env.iam,
        &sign(&key, &h, &claims(json!({"aud": null, "scope": "https://www.googleapis.com/auth/pubsub"}))),
    ));
    let bad = [
        ("wrong kid", sign(&key, &json!({"alg": "RS256", "kid": "0123"}), &claims(json!({})))),
        ("expired", sign(&key, &h, &claims(json!({"iat": NOW - 3800, "exp": NOW - 301})))),
        ("lifetime", sign(&key, &h, &claims(json!({"exp": NOW + 3601})))),
        ("future iat", sign(&key, &h, &claims(json!({"iat": NOW + 301, "exp": NOW + 1000})))),
        ("wrong aud", sign(&key, &h, &claims(json!({"aud": "https://iam.googleapis.com/"})))),
        ("no aud or scope", sign(&key, &h, &claims(json!({"aud": null})))),
        ("unknown account", sign(&key, &h, &claims(json!({"iss": "x@p.iam.gserviceaccount.com", "sub": null})))),
    ];
    for (what, token) in bad {
        assert!(matches!(auth(&env.iam, &token), Err(AuthError::Invalid(_))), "{what}");
    }
    let good = sign(&key, &h, &claims(json!({})));
    let mut forged: Vec<String> = good.split('.').map(String::from).collect();
    forged[2] = URL_SAFE_NO_PAD.encode([0u8; 256]);
    refused(auth(&env.iam, &forged.join(".")));

    // Cached, and still refused once expired (beyond the skew).
    principal(auth(&env.iam, &good));
    env.clock.advance(Duration::from_secs(3600 + 300));
    principal(auth(&env.iam, &good));
    env.clock.advance(Duration::from_secs(1));
    refused(auth(&env.iam, &good));

    // Cached, and refused right after the key is deleted.
    env.clock.set(Timestamp::from_unix_seconds(NOW));
    let cached = self_signed(&key, &email, &kid, NOW);
    principal(auth(&env.iam, &cached));
    let second = env.iam.service_accounts().create_key("p", &email, TOKEN_URI).await.unwrap();
    env.iam.service_accounts().delete_key("p", &email, &kid).await.unwrap();
    assert_eq!(refused(auth(&env.iam, &cached)), "The service account or its key no longer exists.");
    // And with the account.
    let (key2, _, kid2) = signer(&second.key_file);
    let cached2 = self_signed(&key2, &email, &kid2, NOW);
    principal(auth(&env.iam, &cached2));
    env.iam.service_accounts().delete("p", &email).await.unwrap();
    refused(auth(&env.iam, &cached2));
}

#[tokio::test]
async fn policies_grant_access_and_use_etags() {
    let env = env().await;
    let fleet = registry("p", "fleet");
    let other = registry("p", "other");
    let (_, token) = env
        .iam
        .tokens()
        .create(NewToken {
            principal: "user:ana@example.com".into(),
            role: "roles/pubsub.viewer".into(),
            project: "p".into(),
            registry: None,
        })
        .await
        .unwrap();
    let ana = Caller::Principal(principal(auth(&env.iam, &token)));
    assert!(env.iam.check(&ana, "cloudiot.devices.get", Resource::Registry(&fleet)).await.is_err());

    let empty = env.iam.get_registry_policy(&fleet).await.unwrap();
    assert_eq!((empty.version, empty.bindings.len(), empty.etag.as_slice()), (0, 0, &[0x00, 0x20, 0x01][..]));
    let binding =
        |role: &str, member: &str| IamBinding { role: role.into(), members: vec![member.into()], condition: None };
    let set = env
        .iam
        .set_registry_policy(
            &fleet,
            IamPolicy {
                version: 0,
                bindings: vec![binding("roles/cloudiot.provisioner", "user:ana@example.com")],
                etag: empty.etag,
            },
        )
        .await
        .unwrap();
    assert_eq!((set.version, set.etag.len()), (1, 8));
    assert_eq!(env.iam.get_registry_policy(&fleet).await.unwrap(), set);
    env.iam.check(&ana, "cloudiot.devices.create", Resource::Registry(&fleet)).await.unwrap();
    assert!(env.iam.check(&ana, "cloudiot.registries.delete", Resource::Registry(&fleet)).await.is_err());
    assert!(env.iam.check(&ana, "cloudiot.devices.create", Resource::Registry(&other)).await.is_err());
    let asked: Vec<String> =
        ["cloudiot.devices.delete", "cloudiot.registries.update", "pubsub.topics.list"].map(String::from).to_vec();
    assert_eq!(
        env.iam.held(&ana, Resource::Registry(&fleet), &asked).await.unwrap(),
        ["cloudiot.devices.delete", "pubsub.topics.list"]
    );
    let e = env.iam.held(&ana, Resource::Registry(&fleet), &["cloudiot.devices.fly".to_string()]).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some("permissions")));

    // A stale etag is refused; an empty one overwrites.
    let stale = IamPolicy { version: 1, bindings: vec![], etag: vec![0x00, 0x20, 0x01] };
    assert_eq!(env.iam.set_registry_policy(&fleet, stale.clone()).await.unwrap_err().code, Code::Aborted);
    let e = env
        .iam
        .set_registry_policy(
            &fleet,
            IamPolicy { bindings: vec![binding("roles/owner", "user:x@y")], etag: vec![], ..stale.clone() },
        )
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some("policy.bindings[0].role")));
    let e = env
        .iam
        .set_registry_policy(
            &fleet,
            IamPolicy { bindings: vec![binding("roles/cloudiot.viewer", "x@y")], etag: vec![], ..stale.clone() },
        )
        .await
        .unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some("policy.bindings[0].members")));
    let everyone = env
        .iam
        .set_registry_policy(
            &fleet,
            IamPolicy {
                bindings: vec![binding("roles/cloudiot.viewer", "allAuthenticatedUsers")],
                etag: vec![],
                ..stale
            },
        )
        .await
        .unwrap();
    assert_ne!(everyone.etag, set.etag);
    env.iam.check(&ana, "cloudiot.devices.get", Resource::Registry(&fleet)).await.unwrap();
    assert!(env.iam.check(&ana, "cloudiot.devices.create", Resource::Registry(&fleet)).await.is_err());

    // Forgetting the policy takes its grants away.
    env.iam.forget_registry_policy(&fleet).await.unwrap();
    assert!(env.iam.check(&ana, "cloudiot.devices.get", Resource::Registry(&fleet)).await.is_err());
    assert_eq!(env.iam.get_registry_policy(&fleet).await.unwrap().version, 0);

    // Topic and subscription policies (kept by the Pub/Sub engine, in the same table) count too.
    let topic = TopicName::new("q", "events").unwrap();
    assert!(env.iam.check(&ana, "pubsub.topics.publish", Resource::Topic(&topic)).await.is_err());
    let publishers = IamPolicy {
        version: 1,
        bindings: vec![binding("roles/pubsub.publisher", "user:ana@example.com")],
        etag: vec![1],
    };
    env.store.set_iam_policy(topic.as_str(), &publishers).await.unwrap();
    env.iam.check(&ana, "pubsub.topics.publish", Resource::Topic(&topic)).await.unwrap();
    assert!(env.iam.check(&ana, "pubsub.topics.delete", Resource::Topic(&topic)).await.is_err());
    // A project never has a policy: the grant must be the principal's own.
    assert!(env.iam.check(&ana, "pubsub.topics.create", Resource::Project("q")).await.is_err());
    drop(env.dir);
}
