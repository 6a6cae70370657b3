//! `ferrocore keys generate`: a device key pair and a self-signed certificate, the three files
//! `devices create --public-key` and `device simulate --key` take.
//!
//! ES256 keys are P-256; RS256 keys are RSA-2048 (aws-lc-rs generates them, through rcgen). The
//! private key is PKCS#8 PEM, written with mode 0600; the public key is a SubjectPublicKeyInfo PEM.

use super::output::{Format, print_json, status, table};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use rcgen::{CertificateParams, DnType, KeyPair, RsaKeySize};
use serde_json::json;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Write NAME_private.pem, NAME_public.pem and NAME_cert.pem.
    Generate(GenerateArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// ECDSA P-256 with SHA-256 (IoT Core's ES256).
    Es256,
    /// RSA-2048 with PKCS#1 v1.5 SHA-256 (IoT Core's RS256).
    Rs256,
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Key algorithm.
    #[arg(long = "type", value_enum)]
    key_type: KeyType,
    /// Prefix of the files written: NAME_private.pem, NAME_public.pem, NAME_cert.pem.
    #[arg(long, value_name = "NAME")]
    out: PathBuf,
    /// Days the certificate is valid.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

pub fn run(command: KeysCommand) -> Result<()> {
    let KeysCommand::Generate(args) = command;
    let files = generate(&args)?;
    let [private, public, cert] = &files;
    let kind = match args.key_type {
        KeyType::Es256 => "es256",
        KeyType::Rs256 => "rs256",
    };
    if args.format == Format::Json {
        print_json(&json!({
            "type": kind,
            "privateKey": private.display().to_string(),
            "publicKey": public.display().to_string(),
            "certificate": cert.display().to_string(),
        }));
    } else {
        let rows = vec![
            vec![private.display().to_string(), "private key (keep it on the device)".into()],
            vec![public.display().to_string(), "public key".into()],
            vec![cert.display().to_string(), "self-signed certificate".into()],
        ];
        super::output::emit(table(&["FILE", "WHAT"], rows));
    }
    status(format!(
        "Register the device with: ferrocore devices create DEVICE --public-key path={},type={kind}",
        public.display()
    ));
    Ok(())
}

fn generate(args: &GenerateArgs) -> Result<[PathBuf; 3]> {
    let file = |suffix: &str| {
        let mut name = args.out.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let paths = [file("_private.pem"), file("_public.pem"), file("_cert.pem")];
    if !args.force
        && let Some(p) = paths.iter().find(|p| p.exists())
    {
        bail!("{} already exists; pass --force to replace it", p.display());
    }
    if !(1..=36_500).contains(&args.days) {
        bail!("--days must be between 1 and 36500");
    }
    let key = match args.key_type {
        KeyType::Es256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyType::Rs256 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
    }
    .context("cannot generate the key")?;
    let common_name = args.out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "device".into());
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    let now = time::OffsetDateTime::now_utc();
    // A day of slack for devices whose clocks run behind.
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(i64::from(args.days));
    let cert = params.self_signed(&key).context("cannot sign the certificate")?;

    write(&paths[0], &key.serialize_pem(), 0o600, args.force)?;
    write(&paths[1], &key.public_key_pem(), 0o644, args.force)?;
    write(&paths[2], &cert.pem(), 0o644, args.force)?;
    Ok(paths)
}

/// Writes a file with `mode` from its creation on, so a private key is never readable by others,
/// not even for a moment.
fn write(path: &Path, contents: &str, mode: u32, replace: bool) -> Result<()> {
    if replace && path.exists() {
        std::fs::remove_file(path).with_context(|| format!("cannot replace {}", path.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(contents.as_bytes()).with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()?;
    Ok(())
}
