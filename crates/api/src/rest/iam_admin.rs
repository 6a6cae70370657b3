//! The owner's REST endpoints for identities (docs/iam.md), which `ferrocore tokens` and
//! `ferrocore service-accounts` call:
//!
//! * `POST|GET /v1/projects/P/tokens`, `DELETE /v1/projects/P/tokens/ID`: API tokens;
//! * `POST|GET /v1/projects/P/serviceAccounts`, `GET|DELETE .../serviceAccounts/EMAIL`:
//!   service accounts, in the shape of Google's IAM API;
//! * `POST|GET .../serviceAccounts/EMAIL/keys`, `DELETE .../keys/KEY_ID`: their keys. A new key
//!   comes back once, as Google's key file (base64 in `privateKeyData`), whose `token_uri` is this
//!   server's `/token` as the request reached it.
//!
//! The dispatcher admits only the owner here. Errors are Google's JSON errors; secrets (a new
//! token, a key file) appear in the one response that creates them and nowhere else.

use super::{Query, json_response, method_not_supported, oauth, parse_body, route};
use axum::body::Bytes;
use axum::http::request::Parts;
use axum::response::Response;
use base64::Engine;
use ferrocore_core::Error;
use ferrocore_iam::Iam;
use ferrocore_iam::service_accounts::NewServiceAccount;
use ferrocore_iam::tokens::NewToken;
use ferrocore_model::RegistryName;
use ferrocore_model::ids::printable;
use ferrocore_store::iam::{ApiTokenRecord, ServiceAccountKeyRecord, ServiceAccountRecord};
use route::Method;
use serde::Deserialize;
use serde_json::{Value, json};

/// What a management path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Collection {
    Tokens { project: String },
    Token { project: String, id: String },
    Accounts { project: String },
    Account { project: String, email: String },
    Keys { project: String, email: String },
    Key { project: String, email: String, key_id: String },
}

/// Recognises the management paths (everything after `/v1/`): None for any other path, an error
/// for a management path that names nothing served.
pub(crate) fn parse(path: &str) -> Option<Result<Collection, Error>> {
    let raw: Vec<&str> = path.split('/').collect();
    if raw.len() < 3 || raw[0] != "projects" || !matches!(raw[2], "tokens" | "serviceAccounts") {
        return None;
    }
    Some(parse_management(path))
}

fn parse_management(path: &str) -> Result<Collection, Error> {
    let (bare, verb) = route::split_verb(path);
    if let Some(v) = verb {
        return Err(Error::not_found(format!("The method ':{}' does not exist on this resource.", printable(v))));
    }
    let segs = bare.split('/').map(route::decode).collect::<Result<Vec<_>, _>>()?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let project = s[1];
    if project.is_empty() || project.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/') {
        return Err(Error::invalid("name", "Expected 'projects/{project}/...'."));
    }
    let p = project.to_owned();
    let named = |what: &str, v: &str| {
        if v.is_empty() {
            Err(Error::invalid("name", format!("The {what} in the URL is empty.")))
        } else {
            Ok(v.to_owned())
        }
    };
    Ok(match s.as_slice() {
        [_, _, "tokens"] => Collection::Tokens { project: p },
        [_, _, "tokens", id] => Collection::Token { project: p, id: named("token id", id)? },
        [_, _, "serviceAccounts"] => Collection::Accounts { project: p },
        [_, _, "serviceAccounts", email] => Collection::Account { project: p, email: named("email", email)? },
        [_, _, "serviceAccounts", email, "keys"] => Collection::Keys { project: p, email: named("email", email)? },
        [_, _, "serviceAccounts", email, "keys", key] => {
            Collection::Key { project: p, email: named("email", email)?, key_id: named("key id", key)? }
        }
        _ => return Err(route::not_found(path)),
    })
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct CreateToken {
    principal: String,
    role: String,
    /// The registry's full name.
    registry: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct CreateAccount {
    account_id: String,
    service_account: Option<AccountFields>,
    roles: Vec<String>,
    registry: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct AccountFields {
    display_name: String,
    /// Google's IAM API takes one; it is not kept.
    #[allow(dead_code)]
    description: String,
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
struct CreateKey {
    private_key_type: String,
    key_algorithm: String,
}

const KEY_FILE_TYPE: &str = "TYPE_GOOGLE_CREDENTIALS_FILE";
const KEY_ALGORITHM: &str = "KEY_ALG_RSA_2048";

/// A registry named in a body: None when absent or empty.
fn registry(field: &str, given: Option<String>) -> Result<Option<RegistryName>, Error> {
    match given.as_deref() {
        None | Some("") => Ok(None),
        Some(r) => Ok(Some(RegistryName::parse_field(field, r)?)),
    }
}

/// Serves one management request of the owner.
pub(crate) async fn serve(
    iam: &Iam,
    parts: &Parts,
    collection: Collection,
    method: Method,
    body: &Bytes,
) -> Result<Response, Error> {
    let q = Query::parse(parts.uri.query());
    let empty = || json_response(&json!({}));
    Ok(match (collection, method) {
        (Collection::Tokens { project }, Method::Post) => {
            q.check(&[])?;
            let req: CreateToken = parse_body(body)?;
            let new = NewToken {
                principal: req.principal,
                role: req.role,
                project,
                registry: registry("registry", req.registry)?,
            };
            let (record, token) = iam.tokens().create(new).await?;
            let mut out = token_json(&record);
            out["token"] = Value::String(token);
            json_response(&out)
        }
        (Collection::Tokens { project }, Method::Get) => {
            q.check(&["pageSize", "pageToken"])?;
            let tokens: Vec<Value> = iam.tokens().list(&project).iter().map(token_json).collect();
            json_response(&json!({ "tokens": tokens }))
        }
        (Collection::Token { project, id }, Method::Delete) => {
            q.check(&[])?;
            iam.tokens().revoke(&project, &id).await?;
            empty()
        }
        (Collection::Accounts { project }, Method::Post) => {
            q.check(&[])?;
            let req: CreateAccount = parse_body(body)?;
            let new = NewServiceAccount {
                project,
                account_id: req.account_id,
                display_name: req.service_account.map(|a| a.display_name).unwrap_or_default(),
                roles: req.roles,
                registry: registry("registry", req.registry)?,
            };
            json_response(&account_json(&iam.service_accounts().create(new).await?))
        }
        (Collection::Accounts { project }, Method::Get) => {
            q.check(&["pageSize", "pageToken"])?;
            let accounts: Vec<Value> = iam.service_accounts().list(&project).iter().map(account_json).collect();
            json_response(&json!({ "accounts": accounts }))
        }
        (Collection::Account { project, email }, Method::Get) => {
            q.check(&[])?;
            json_response(&account_json(&iam.service_accounts().get(&project, &email)?))
        }
        (Collection::Account { project, email }, Method::Delete) => {
            q.check(&[])?;
            iam.service_accounts().delete(&project, &email).await?;
            empty()
        }
        (Collection::Keys { project, email }, Method::Post) => {
            q.check(&[])?;
            let req: CreateKey = parse_body(body)?;
            if !matches!(req.private_key_type.as_str(), "" | "TYPE_UNSPECIFIED" | KEY_FILE_TYPE) {
                return Err(Error::invalid(
                    "privateKeyType",
                    format!("Only {KEY_FILE_TYPE} keys are made: the key file Google's libraries read."),
                ));
            }
            if !matches!(req.key_algorithm.as_str(), "" | "KEY_ALG_UNSPECIFIED" | KEY_ALGORITHM) {
                return Err(Error::invalid("keyAlgorithm", format!("Only {KEY_ALGORITHM} keys are made.")));
            }
            let token_uri = oauth::token_uri(parts)?;
            let key = iam.service_accounts().create_key(&project, &email, &token_uri).await?;
            let mut out = key_json(&project, &key.record);
            out["privateKeyType"] = json!(KEY_FILE_TYPE);
            out["privateKeyData"] = json!(base64::engine::general_purpose::STANDARD.encode(key.key_file.as_bytes()));
            json_response(&out)
        }
        (Collection::Keys { project, email }, Method::Get) => {
            q.check(&["keyTypes"])?;
            let keys = iam.service_accounts().list_keys(&project, &email)?;
            let keys: Vec<Value> = keys.iter().map(|k| key_json(&project, k)).collect();
            json_response(&json!({ "keys": keys }))
        }
        (Collection::Key { project, email, key_id }, Method::Delete) => {
            q.check(&[])?;
            iam.service_accounts().delete_key(&project, &email, &key_id).await?;
            empty()
        }
        _ => return Err(method_not_supported()),
    })
}

fn token_json(t: &ApiTokenRecord) -> Value {
    let mut out = json!({
        "id": t.id,
        "principal": t.principal,
        "role": t.role,
        "createTime": t.create_time.to_string(),
    });
    if let Some(r) = &t.registry {
        out["registry"] = json!(r);
    }
    out
}

fn account_json(a: &ServiceAccountRecord) -> Value {
    let mut out = json!({
        "name": format!("projects/{}/serviceAccounts/{}", a.project, a.email),
        "projectId": a.project,
        "uniqueId": a.unique_id,
        "email": a.email,
        "displayName": a.display_name,
        "roles": a.roles,
        "createTime": a.create_time.to_string(),
    });
    if let Some(r) = &a.registry {
        out["registry"] = json!(r);
    }
    out
}

fn key_json(project: &str, k: &ServiceAccountKeyRecord) -> Value {
    json!({
        "name": format!("projects/{project}/serviceAccounts/{}/keys/{}", k.email, k.key_id),
        "keyAlgorithm": KEY_ALGORITHM,
        "validAfterTime": k.create_time.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_paths() {
        let p = |s: &str| parse(s).map(|r| r.map_err(|e| e.code));
        assert_eq!(p("projects/p/tokens"), Some(Ok(Collection::Tokens { project: "p".into() })));
        assert_eq!(
            p("projects/p/tokens/0123456789abcdef"),
            Some(Ok(Collection::Token { project: "p".into(), id: "0123456789abcdef".into() }))
        );
        assert_eq!(
            p("projects/p/serviceAccounts/sa-one%40p.iam.gserviceaccount.com/keys/k1"),
            Some(Ok(Collection::Key {
                project: "p".into(),
                email: "sa-one@p.iam.gserviceaccount.com".into(),
                key_id: "k1".into()
            }))
        );
        assert!(matches!(p("projects/p/serviceAccounts/e/keys"), Some(Ok(Collection::Keys { .. }))));
        use ferrocore_core::Code;
        assert_eq!(p("projects/p/tokens/a/b"), Some(Err(Code::NotFound)));
        assert_eq!(p("projects/p/serviceAccounts/e:disable"), Some(Err(Code::NotFound)));
        assert_eq!(p("projects//tokens"), Some(Err(Code::InvalidArgument)));
        assert_eq!(p("projects/p/tokens/"), Some(Err(Code::InvalidArgument)));
        assert_eq!(p("projects/p/topics/t"), None);
        assert_eq!(p("projects/p/locations/l/registries"), None);
        assert_eq!(p("projects/p"), None);
    }
}
