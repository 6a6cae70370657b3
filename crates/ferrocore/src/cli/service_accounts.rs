//! `ferrocore service-accounts create|list|describe|delete` and `service-accounts keys
//! create|list|delete`: the service accounts of a project and their keys (docs/iam.md), the
//! shapes of Google's IAM API. `keys create` writes the key file Google's libraries take
//! (`GOOGLE_APPLICATION_CREDENTIALS`, `from_service_account_file`); the server keeps only the
//! public half, so the file is written once, with mode 0600.
//!
//! An account is given by its short id (completed with `--project` to
//! `NAME@PROJECT.iam.gserviceaccount.com`), its email, or its full name
//! `projects/P/serviceAccounts/EMAIL`.
//!
//! These endpoints have no message in `ferrocore_proto` (the server writes Google's IAM shapes as
//! plain JSON): requests and answers are plain JSON here too, and `--format json` prints the
//! server's answer as it came.

use super::api::{Connection, Location, last_id};
use super::output::{Column, Output, status, text};
use anyhow::{Context, Result, bail};
use base64::Engine;
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ServiceAccountsArgs {
    #[command(subcommand)]
    command: ServiceAccountsCommand,
    #[command(flatten)]
    connection: Connection,
    #[command(flatten)]
    location: Location,
    #[command(flatten)]
    output: Output,
}

#[derive(Subcommand, Debug)]
enum ServiceAccountsCommand {
    /// Create a service account holding the roles given.
    Create {
        /// Account id (6-30 characters: lower-case letters, digits, `-`), or the full email
        /// NAME@PROJECT.iam.gserviceaccount.com.
        name: String,
        /// A role the account holds, e.g. roles/cloudiot.deviceController; repeat for several.
        #[arg(long = "role", value_name = "ROLE", required = true)]
        roles: Vec<String>,
        /// Hold the roles on this registry alone (id, or full name) instead of on the project.
        #[arg(long, value_name = "REGISTRY")]
        registry: Option<String>,
        /// A human-readable name.
        #[arg(long, value_name = "TEXT")]
        display_name: Option<String>,
    },
    /// List the service accounts of a project.
    List,
    /// Show a service account.
    Describe {
        /// Account id, email or full name.
        name: String,
    },
    /// Delete a service account: its access tokens and keys are refused from now on.
    Delete {
        /// Account id, email or full name.
        name: String,
    },
    /// Manage a service account's keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key and write its key file (Google's JSON format) to --out, mode 0600.
    Create {
        /// Account id, email or full name.
        name: String,
        /// Where to write the key file; it is the only copy of the private key.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// List a service account's keys.
    List {
        /// Account id, email or full name.
        name: String,
    },
    /// Delete a key: JWTs it signed and access tokens issued for it are refused from now on.
    Delete {
        /// Account id, email or full name.
        name: String,
        /// The key's id (as `keys list` shows it), or its full name.
        key_id: String,
    },
}

const EMAIL_DOMAIN: &str = ".iam.gserviceaccount.com";

/// A service account as the API names it.
#[derive(Debug, PartialEq, Eq)]
struct Account {
    project: String,
    email: String,
}

impl Account {
    /// From a short id, an email or `projects/P/serviceAccounts/EMAIL`.
    fn parse(location: &Location, name: &str) -> Result<Account> {
        if let Some(rest) = name.strip_prefix("projects/") {
            let mut parts = rest.split('/');
            if let (Some(project), Some("serviceAccounts"), Some(email), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
                && !project.is_empty()
                && email.contains('@')
            {
                return Ok(Account { project: project.to_owned(), email: email.to_owned() });
            }
            bail!("'{name}' is not a name like projects/P/serviceAccounts/EMAIL");
        }
        if name.contains('/') || name.is_empty() {
            bail!("'{name}' is neither a service account id, an email nor a full name starting with projects/");
        }
        if let Some((local, domain)) = name.split_once('@') {
            if local.is_empty() || domain.is_empty() {
                bail!("'{name}' is not a service account email");
            }
            // NAME@PROJECT.iam.gserviceaccount.com names its project; another domain needs --project.
            let project = match domain.strip_suffix(EMAIL_DOMAIN) {
                Some(p) if !p.is_empty() => p.to_owned(),
                _ => location.project()?.to_owned(),
            };
            return Ok(Account { project, email: name.to_owned() });
        }
        let project = location.project()?.to_owned();
        Ok(Account { email: format!("{name}@{project}{EMAIL_DOMAIN}"), project })
    }

    /// `projects/P/serviceAccounts/EMAIL`.
    fn name(&self) -> String {
        format!("projects/{}/serviceAccounts/{}", self.project, self.email)
    }

    /// The account id: the email's local part.
    fn id(&self) -> &str {
        self.email.split('@').next().unwrap_or(&self.email)
    }
}

const COLUMNS: &[Column] = &[
    ("EMAIL", |a| text(&a["email"])),
    ("DISPLAY_NAME", |a| text(&a["displayName"])),
    ("ROLES", |a| {
        let roles: Vec<String> = a["roles"].as_array().into_iter().flatten().map(text).collect();
        roles.join(",")
    }),
    ("REGISTRY", |a| text(&a["registry"])),
    ("CREATED", |a| text(&a["createTime"])),
];

const KEY_COLUMNS: &[Column] = &[
    ("KEY_ID", |k| last_id(&text(&k["name"])).to_owned()),
    ("ALGORITHM", |k| text(&k["keyAlgorithm"])),
    ("CREATED", |k| text(&k["validAfterTime"])),
];

pub async fn run(args: ServiceAccountsArgs) -> Result<()> {
    let api = args.connection.api()?;
    let (location, out) = (&args.location, &args.output);
    match args.command {
        ServiceAccountsCommand::Create { name, roles, registry, display_name } => {
            let account = Account::parse(location, &name)?;
            let mut body = Map::new();
            body.insert("accountId".into(), account.id().into());
            if let Some(d) = display_name {
                body.insert("serviceAccount".into(), serde_json::json!({ "displayName": d }));
            }
            body.insert("roles".into(), roles.into());
            if let Some(r) = &registry {
                body.insert("registry".into(), location.registry(r)?.into());
            }
            let parent = format!("projects/{}", account.project);
            let created: Value = api.post(&parent, "/serviceAccounts", &Value::Object(body)).await?;
            let email = created["email"].as_str().unwrap_or(&account.email);
            status(format!("Created service account [{email}]."));
            if out.json() {
                out.resource(&created)?;
            }
        }
        ServiceAccountsCommand::List => {
            let parent = format!("projects/{}", location.project()?);
            let list: Value = api.get(&parent, "/serviceAccounts", &[]).await?;
            let items = list["accounts"].as_array().cloned().unwrap_or_default();
            out.list(&items, COLUMNS)?;
        }
        ServiceAccountsCommand::Describe { name } => {
            let account = Account::parse(location, &name)?;
            out.resource(&api.get::<Value>(&account.name(), "", &[]).await?)?;
        }
        ServiceAccountsCommand::Delete { name } => {
            let account = Account::parse(location, &name)?;
            let answer: Value = api.delete(&account.name()).await?;
            status(format!("Deleted service account [{}].", account.email));
            if out.json() {
                out.resource(&answer)?;
            }
        }
        ServiceAccountsCommand::Keys { command } => match command {
            KeysCommand::Create { name, out: path, force } => {
                let account = Account::parse(location, &name)?;
                // Before the key exists: a key whose file cannot be written is a key nobody has.
                if !force && path.exists() {
                    bail!("{} already exists; pass --force to replace it", path.display());
                }
                let mut key: Value = api.post(&account.name(), "/keys", &Value::Object(Map::new())).await?;
                let key_id = last_id(&text(&key["name"])).to_owned();
                let written = key_file(&key).and_then(|file| write_private(&path, &file, force));
                if let Err(e) = written {
                    return Err(e.context(format!(
                        "key [{key_id}] was created but its file was not written; delete it with \
                         `ferrocore service-accounts keys delete {} {key_id}`",
                        account.email
                    )));
                }
                status(format!("Created key [{key_id}] of [{}] in {}.", account.email, path.display()));
                if out.json() {
                    if let Some(m) = key.as_object_mut() {
                        m.remove("privateKeyData");
                    }
                    out.resource(&key)?;
                }
            }
            KeysCommand::List { name } => {
                let account = Account::parse(location, &name)?;
                let list: Value = api.get(&account.name(), "/keys", &[]).await?;
                let items = list["keys"].as_array().cloned().unwrap_or_default();
                out.list(&items, KEY_COLUMNS)?;
            }
            KeysCommand::Delete { name, key_id } => {
                let account = Account::parse(location, &name)?;
                let id = last_id(&key_id).to_owned();
                if id.is_empty() {
                    bail!("'{key_id}' is not a key id (see `ferrocore service-accounts keys list`)");
                }
                let answer: Value = api.delete(&format!("{}/keys/{id}", account.name())).await?;
                status(format!("Deleted key [{id}] of [{}].", account.email));
                if out.json() {
                    out.resource(&answer)?;
                }
            }
        },
    }
    Ok(())
}

/// The key file a key's `privateKeyData` holds (base64 of Google's JSON key file).
fn key_file(key: &Value) -> Result<Vec<u8>> {
    let data = key["privateKeyData"].as_str().context("the server answered without privateKeyData")?;
    let engine = base64::engine::general_purpose::STANDARD;
    let bytes = engine.decode(data.trim()).context("the server's privateKeyData is not base64")?;
    serde_json::from_slice::<Value>(&bytes).context("the server's privateKeyData is not a JSON key file")?;
    Ok(bytes)
}

/// Writes `contents` to a new file with mode 0600 from its creation on; with `replace`, an
/// existing file is replaced (by renaming a new file over it, so it is never half written).
fn write_private(path: &Path, contents: &[u8], replace: bool) -> Result<()> {
    let create = |p: &Path| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .with_context(|| format!("cannot create {}", p.display()))?;
        f.write_all(contents).with_context(|| format!("cannot write {}", p.display()))?;
        f.sync_all().with_context(|| format!("cannot write {}", p.display()))?;
        Ok(())
    };
    if !replace {
        return create(path);
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    create(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("cannot replace {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(project: Option<&str>) -> Location {
        Location { project: project.map(str::to_owned), region: "us-central1".into() }
    }

    #[test]
    fn accounts_from_ids_emails_or_names() {
        let a = Account::parse(&loc(Some("p")), "backend").unwrap();
        assert_eq!(a, Account { project: "p".into(), email: "backend@p.iam.gserviceaccount.com".into() });
        assert_eq!(a.name(), "projects/p/serviceAccounts/backend@p.iam.gserviceaccount.com");
        assert_eq!(a.id(), "backend");
        let e = Account::parse(&loc(None), "x-ingest@other.iam.gserviceaccount.com").unwrap();
        assert_eq!(e.project, "other", "the email names its project");
        let n = Account::parse(&loc(None), "projects/q/serviceAccounts/b@q.iam.gserviceaccount.com").unwrap();
        assert_eq!((n.project.as_str(), n.email.as_str()), ("q", "b@q.iam.gserviceaccount.com"));
        assert!(Account::parse(&loc(None), "backend").unwrap_err().to_string().contains("--project"));
        assert!(Account::parse(&loc(Some("p")), "a/b").is_err());
        assert!(Account::parse(&loc(Some("p")), "projects/p/serviceAccounts").is_err());
        assert!(Account::parse(&loc(Some("p")), "@p.iam.gserviceaccount.com").is_err());
    }

    #[test]
    fn key_files_are_private_and_kept_unless_forced() {
        let dir = std::env::temp_dir().join(format!("ferrocore-sa-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("key.json");
        let _ = std::fs::remove_file(&path);
        write_private(&path, b"{\"a\":1}", false).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_private(&path, b"{}", false).is_err());
        write_private(&path, b"{}", true).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{}");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
