//! The admin token: taken from configuration, or generated once and kept in the data directory.

use anyhow::{Context, Result, bail};
use base64::Engine;
use ferrocore_iam::AdminToken;
use rand::RngCore;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const TOKEN_FILE: &str = "admin-token";

/// Reads a secret file, refusing one that others than its owner may read.
pub fn read_secret_file(path: &Path) -> Result<String> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!("{} is readable by other users; restrict it with `chmod 600 {}`", path.display(), path.display());
    }
    let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text.trim().to_owned())
}

/// Where the admin token came from, for the startup message.
pub enum TokenSource {
    Configured,
    Existing(std::path::PathBuf),
    Generated(std::path::PathBuf),
}

/// Uses `configured` if given; otherwise the token in `DATA_DIR/admin-token`, creating it (mode
/// 0600) with 256 random bits on first start.
pub fn admin_token(data_dir: &Path, configured: Option<String>) -> Result<(AdminToken, TokenSource)> {
    if let Some(t) = configured {
        let token = AdminToken::new(t).map_err(|e| anyhow::anyhow!("invalid admin token: {e}"))?;
        return Ok((token, TokenSource::Configured));
    }
    let path = data_dir.join(TOKEN_FILE);
    if path.exists() {
        let t = read_secret_file(&path)?;
        let token =
            AdminToken::new(t).map_err(|e| anyhow::anyhow!("invalid admin token in {}: {e}", path.display()))?;
        return Ok((token, TokenSource::Existing(path)));
    }
    let mut raw = [0u8; 32];
    rand::rng().fill_bytes(&mut raw);
    let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(t.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    let token = AdminToken::new(t).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((token, TokenSource::Generated(path)))
}
