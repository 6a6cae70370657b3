//! EC P-256 points for ES256: the SEC1 point of a device key, compressed (`02`/`03` || x) or
//! uncompressed (`04` || x || y), in the uncompressed form JWT verification takes. Decompression
//! and the on-curve check are aws-lc-rs's (`EC_POINT_oct2point`), not ours.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, ParsedPublicKey};

/// Bytes of an uncompressed P-256 point: `04 || x || y`.
const UNCOMPRESSED_LEN: usize = 65;

/// The uncompressed SEC1 form of a P-256 point given compressed or uncompressed; None when the
/// encoding is wrong or the x coordinate has no point. Whether an uncompressed point lies on the
/// curve is left to aws-lc-rs.
pub(super) fn uncompressed_p256_point(point: &[u8]) -> Option<Vec<u8>> {
    match point {
        [0x04, rest @ ..] if rest.len() == 64 => Some(point.to_vec()),
        [0x02 | 0x03, x @ ..] if x.len() == 32 => {
            // aws-lc-rs decodes the compressed point (refusing an x with no point on the curve)
            // and re-encodes the key as a SubjectPublicKeyInfo, whose BIT STRING ends with the
            // uncompressed point.
            let key = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).ok()?;
            let spki = key.as_der().ok()?;
            let spki: &[u8] = spki.as_ref();
            let uncompressed = spki.get(spki.len().checked_sub(UNCOMPRESSED_LEN)?..)?;
            (uncompressed[0] == 0x04 && uncompressed[1..33] == *x).then(|| uncompressed.to_vec())
        }
        _ => None,
    }
}
