//! PEM armour (RFC 7468) to DER and back: key files, public keys for the Device Manager API,
//! certificates.
//!
//! Only what device tooling meets: base64 between `-----BEGIN L-----` and `-----END L-----` lines,
//! no headers (encrypted keys are not supported). Text outside the blocks is ignored, as OpenSSL
//! ignores it, so a file with an explanation above its key still reads.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Why PEM text did not give DER.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("no PEM block (-----BEGIN ...-----)")]
    NoBlock,
    #[error("the PEM block {0} has no matching END line")]
    Unterminated(String),
    #[error("the PEM block {0} is not valid base64")]
    BadBase64(String),
}

/// One block of a PEM file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The label: `PRIVATE KEY`, `EC PRIVATE KEY`, `PUBLIC KEY`, `CERTIFICATE`...
    pub label: String,
    pub der: Vec<u8>,
}

/// Every block of `pem`, in order.
pub fn blocks(pem: &str) -> Result<Vec<Block>, PemError> {
    let mut out = Vec::new();
    let mut lines = pem.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line.strip_prefix("-----BEGIN ").and_then(|l| l.strip_suffix("-----")) else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = String::new();
        loop {
            match lines.next() {
                Some(l) if l == end => break,
                Some(l) => body.push_str(l),
                None => return Err(PemError::Unterminated(label.to_owned())),
            }
        }
        let der = STANDARD.decode(body).map_err(|_| PemError::BadBase64(label.to_owned()))?;
        out.push(Block { label: label.to_owned(), der });
    }
    Ok(out)
}

/// The DER of the first block of `pem`: what a file holding one key or certificate carries.
pub fn to_der(pem: &str) -> Result<Vec<u8>, PemError> {
    blocks(pem)?.into_iter().next().map(|b| b.der).ok_or(PemError::NoBlock)
}

/// `der` armoured as `label`, in lines of 64 characters as OpenSSL writes them (the API compares
/// public keys as text, so the same key should always read the same).
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 is ASCII, so every 64-byte chunk is whole characters.
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode_gives_the_der_back() {
        for len in [0, 1, 47, 48, 49, 200] {
            let der: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let pem = encode("PUBLIC KEY", &der);
            assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
            assert_eq!(to_der(&pem), Ok(der));
        }
    }

    #[test]
    fn text_around_blocks_crlf_and_several_blocks() {
        let pem = "A key made for the tests.\r\n-----BEGIN EC PARAMETERS-----\r\nBggqhkjOPQMBBw==\r\n\
                   -----END EC PARAMETERS-----\r\n\r\n-----BEGIN EC PRIVATE KEY-----\r\nAQID\r\nBA==\r\n\
                   -----END EC PRIVATE KEY-----\r\ntrailing words\r\n";
        let got = blocks(pem).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].label, "EC PARAMETERS");
        assert_eq!(got[1], Block { label: "EC PRIVATE KEY".into(), der: vec![1, 2, 3, 4] });
        assert_eq!(to_der(pem).unwrap(), got[0].der);
    }

    #[test]
    fn broken_pem_is_refused() {
        assert_eq!(to_der("no armour at all"), Err(PemError::NoBlock));
        assert_eq!(to_der(""), Err(PemError::NoBlock));
        assert_eq!(to_der("-----BEGIN X-----\nAQID\n"), Err(PemError::Unterminated("X".into())));
        assert_eq!(to_der("-----BEGIN X-----\nAQID\n-----END Y-----\n"), Err(PemError::Unterminated("X".into())));
        assert_eq!(to_der("-----BEGIN X-----\n!!!!\n-----END X-----\n"), Err(PemError::BadBase64("X".into())));
    }

    #[test]
    fn a_fixture_key_strips_to_its_der() {
        let pem = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../auth/tests/fixtures/ec_public.pem"))
            .unwrap();
        let der = to_der(&pem).unwrap();
        // A P-256 SubjectPublicKeyInfo is 91 bytes: a SEQUENCE of 89.
        assert_eq!((der.len(), der[0], der[1]), (91, 0x30, 89));
        assert_eq!(encode("PUBLIC KEY", &der), pem);
    }
}
