//! PEM decoding with the checks Cloud IoT Core's users need spelled out: exactly one block with
//! nothing but whitespace around it, private keys recognised (and never echoed), and a
//! user-facing sentence for every way a paste goes wrong (SSH keys, literal `\n`, PKCS#1 blocks...).

use base64::Engine as _;

/// One decoded PEM block.
pub(super) struct PemBlock {
    pub(super) label: String,
    pub(super) der: Vec<u8>,
}

/// The label of a private key block anywhere in `input`, if there is one.
pub(super) fn private_key_label(input: &str) -> Option<String> {
    if input.contains("PuTTY-User-Key-File") {
        return Some("PuTTY PRIVATE KEY".to_string());
    }
    input
        .lines()
        .filter_map(|line| begin_label(line.trim()))
        .find(|label| label.contains("PRIVATE KEY"))
        .map(|label| if is_plain_label(label) { label.to_string() } else { "PRIVATE KEY".to_string() })
}

pub(super) fn begin_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----BEGIN ")?.strip_suffix("-----")
}

pub(super) fn end_label(line: &str) -> Option<&str> {
    line.strip_prefix("-----END ")?.strip_suffix("-----")
}

/// Whether a PEM label is safe and short enough to quote back to the user.
pub(super) fn is_plain_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 40
        && label.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ')
}

/// Decodes `input` as exactly one PEM block with nothing but whitespace around it.
/// The error is a user-facing problem description ("it ...").
pub(super) fn parse_single_pem(input: &str) -> Result<PemBlock, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    if !text.contains("-----BEGIN") {
        let openssh = ["ssh-rsa ", "ssh-ed25519 ", "ecdsa-sha2-", "---- BEGIN SSH2 PUBLIC KEY ----"];
        if openssh.iter().any(|prefix| text.starts_with(prefix)) {
            return Err("it is an SSH public key, not a PEM block".to_string());
        }
        return Err("it is not PEM-encoded (there is no '-----BEGIN' line)".to_string());
    }
    if text.contains("\\n") {
        return Err("it contains the two characters '\\n' where line breaks should be".to_string());
    }
    let mut lines = text.lines().map(str::trim).filter(|line| !line.is_empty());
    let mut blocks = Vec::new();
    while let Some(line) = lines.next() {
        let Some(label) = begin_label(line) else {
            return Err(if blocks.is_empty() {
                "it has unexpected text before the '-----BEGIN' line".to_string()
            } else {
                "it has unexpected text after the '-----END' line".to_string()
            });
        };
        let mut body = String::new();
        let mut ended = false;
        for line in lines.by_ref() {
            if let Some(end) = end_label(line) {
                if end != label {
                    return Err("its '-----END' line does not match its '-----BEGIN' line".to_string());
                }
                ended = true;
                break;
            }
            if line.starts_with("-----") {
                return Err("its PEM block is not closed by an '-----END' line".to_string());
            }
            body.extend(line.chars().filter(|c| !c.is_whitespace()));
        }
        if !ended {
            return Err("its PEM block is not closed by an '-----END' line".to_string());
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| "the content of its PEM block is not valid base64".to_string())?;
        if der.is_empty() {
            return Err("its PEM block is empty".to_string());
        }
        blocks.push(PemBlock { label: label.to_string(), der });
    }
    if blocks.len() > 1 {
        return Err(format!("it holds {} PEM blocks, but exactly one is allowed", blocks.len()));
    }
    blocks.pop().ok_or_else(|| "it is not PEM-encoded (there is no '-----BEGIN' line)".to_string())
}

/// A problem description for a PEM block of an unexpected type.
pub(super) fn describe_other_label(label: &str) -> String {
    match label {
        "RSA PUBLIC KEY" => "it is a PKCS#1 RSA public key ('-----BEGIN RSA PUBLIC KEY-----'); convert it to a \
                             SubjectPublicKeyInfo with `openssl rsa -RSAPublicKey_in -in key.pem -pubout`"
            .to_string(),
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => {
            "it is a certificate signing request, not a certificate or a public key".to_string()
        }
        "EC PARAMETERS" => "it holds only EC curve parameters ('-----BEGIN EC PARAMETERS-----'), not a key".to_string(),
        label if is_plain_label(label) => format!("it is a PEM block of type '-----BEGIN {label}-----'"),
        _ => "it is a PEM block of an unexpected type".to_string(),
    }
}
