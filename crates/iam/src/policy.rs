//! IAM policies on resources (`google.iam.v1.Policy`): the rules shared by registry policies
//! (kept here) and topic and subscription policies (kept by the Pub/Sub engine), so that both
//! validate members and make etags the same way.
//!
//! A resource that never had a policy answers an empty one, version 0, with the etag `ACAB`
//! ([`EMPTY_POLICY_ETAG`]), as Pub/Sub does; every write makes a new random 8-byte etag, and a
//! write naming an etag that is no longer the current one is refused with ABORTED.

use ferrocore_core::error::Code;
use ferrocore_core::{Error, Result};
use ferrocore_model::pubsub::IamPolicy;

/// The etag of a resource that never had a policy (`ACAB` in base64, as Pub/Sub answers).
pub const EMPTY_POLICY_ETAG: &[u8] = &[0x00, 0x20, 0x01];

/// Members that name every caller rather than one principal.
pub const ALL_AUTHENTICATED_USERS: &str = "allAuthenticatedUsers";
pub const ALL_USERS: &str = "allUsers";

/// The policy of a resource that never had one.
pub fn empty_policy() -> IamPolicy {
    IamPolicy { version: 0, bindings: Vec::new(), etag: EMPTY_POLICY_ETAG.to_vec() }
}

/// A fresh etag for a policy being written.
pub fn new_etag() -> Vec<u8> {
    rand::random::<[u8; 8]>().to_vec()
}

/// Whether `m` is a member string a policy binding may name: `allUsers`, `allAuthenticatedUsers`,
/// or `KIND:VALUE` with a known kind and a value of 1 to 512 bytes.
pub fn valid_member(m: &str) -> bool {
    matches!(m, ALL_USERS | ALL_AUTHENTICATED_USERS)
        || ["user:", "serviceAccount:", "group:", "domain:", "deleted:", "principal:", "principalSet:"]
            .iter()
            .any(|p| m.strip_prefix(p).is_some_and(|rest| !rest.is_empty() && rest.len() <= 512))
}

/// Whether `p` names one principal the way an API token's principal must: `user:`,
/// `serviceAccount:`, `group:` or `domain:` followed by 1 to 512 bytes without whitespace or
/// control characters.
pub fn valid_principal(p: &str) -> bool {
    ["user:", "serviceAccount:", "group:", "domain:"].iter().any(|kind| {
        p.strip_prefix(kind).is_some_and(|rest| {
            !rest.is_empty() && rest.len() <= 512 && !rest.chars().any(|c| c.is_whitespace() || c.is_control())
        })
    })
}

/// Checks a registry policy before it is stored: predefined roles only ([`crate::roles::ROLES`]),
/// well-formed members, no conditions (they would never be evaluated, so a conditional binding
/// would silently grant nothing).
pub fn check_registry_bindings(policy: &IamPolicy) -> Result<()> {
    for (i, b) in policy.bindings.iter().enumerate() {
        if !crate::roles::is_role(&b.role) {
            return Err(Error::invalid(
                format!("policy.bindings[{i}].role"),
                format!(
                    "Role '{}' is not supported: use a predefined role (roles/cloudiot.viewer, .deviceController, \
                     .provisioner, .editor, .admin; roles/pubsub.viewer, .publisher, .subscriber, .editor, .admin).",
                    ferrocore_model::ids::printable(&b.role)
                ),
            ));
        }
        for m in &b.members {
            if !valid_member(m) {
                return Err(Error::invalid(
                    format!("policy.bindings[{i}].members"),
                    format!(
                        "Invalid member '{}': expected user:, serviceAccount:, group:, domain:, allUsers or \
                         allAuthenticatedUsers.",
                        ferrocore_model::ids::printable(m)
                    ),
                ));
            }
        }
        if b.condition.is_some() {
            return Err(Error::invalid(
                format!("policy.bindings[{i}].condition"),
                "Conditional role bindings are not supported on registries.",
            ));
        }
    }
    Ok(())
}

/// ABORTED unless `presented` is empty (an unconditional write) or the current etag.
pub fn check_etag(presented: &[u8], current: &[u8]) -> Result<()> {
    if presented.is_empty() || presented == current {
        Ok(())
    } else {
        Err(Error::new(Code::Aborted, "The policy changed since it was read (etag mismatch); read it again and retry."))
    }
}

/// Whether a binding of `policy` gives `member` (or every authenticated caller) a role that
/// includes `permission`. Conditional bindings grant nothing: conditions are not evaluated.
pub fn binds(policy: &IamPolicy, member: &str, permission: &str) -> bool {
    policy.bindings.iter().any(|b| {
        b.condition.is_none()
            && crate::roles::grants(&b.role, permission)
            && b.members.iter().any(|m| m == member || m == ALL_AUTHENTICATED_USERS || m == ALL_USERS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrocore_model::pubsub::IamBinding;

    fn binding(role: &str, members: &[&str]) -> IamBinding {
        IamBinding { role: role.into(), members: members.iter().map(|m| (*m).into()).collect(), condition: None }
    }

    #[test]
    fn members_and_principals() {
        for ok in ["user:a@b.c", "serviceAccount:x@p.iam.gserviceaccount.com", "group:g@x", "domain:x.com"] {
            assert!(valid_member(ok) && valid_principal(ok), "{ok}");
        }
        assert!(valid_member("allUsers") && !valid_principal("allUsers"));
        assert!(valid_member("allAuthenticatedUsers") && !valid_principal("allAuthenticatedUsers"));
        for bad in ["", "user:", "bob", "user:a b", "user:a\u{7}", &format!("user:{}", "x".repeat(513))] {
            assert!(!valid_principal(bad), "{bad:?}");
        }
        assert!(!valid_member("user:") && !valid_member("someone"));
    }

    #[test]
    fn registry_bindings_need_known_roles_and_members() {
        let ok =
            IamPolicy { version: 1, bindings: vec![binding("roles/cloudiot.viewer", &["user:a@b"])], etag: vec![] };
        assert!(check_registry_bindings(&ok).is_ok());
        let bad_role = IamPolicy { bindings: vec![binding("roles/owner", &["user:a@b"])], ..ok.clone() };
        let e = check_registry_bindings(&bad_role).unwrap_err();
        assert_eq!((e.code, e.field.as_deref()), (Code::InvalidArgument, Some("policy.bindings[0].role")));
        let bad_member = IamPolicy {
            bindings: vec![binding("roles/cloudiot.viewer", &["user:a@b"]), binding("roles/cloudiot.viewer", &["x"])],
            ..ok.clone()
        };
        let e = check_registry_bindings(&bad_member).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("policy.bindings[1].members"));
        let mut conditional = ok.clone();
        conditional.bindings[0].condition = Some(("t".into(), "d".into(), "true".into()));
        assert!(check_registry_bindings(&conditional).is_err());
        assert!(!binds(&conditional, "user:a@b", "cloudiot.devices.get"));
    }

    #[test]
    fn binds_matches_member_or_everyone() {
        let p = IamPolicy {
            version: 1,
            bindings: vec![
                binding("roles/cloudiot.viewer", &["user:a@b"]),
                binding("roles/pubsub.publisher", &["allAuthenticatedUsers"]),
            ],
            etag: vec![1],
        };
        assert!(binds(&p, "user:a@b", "cloudiot.devices.get"));
        assert!(!binds(&p, "user:a@b", "cloudiot.devices.delete"));
        assert!(!binds(&p, "user:c@d", "cloudiot.devices.get"));
        assert!(binds(&p, "user:c@d", "pubsub.topics.publish"));
    }

    #[test]
    fn etags() {
        assert!(check_etag(&[], &[1, 2]).is_ok());
        assert!(check_etag(&[1, 2], &[1, 2]).is_ok());
        assert_eq!(check_etag(&[1], &[1, 2]).unwrap_err().code, Code::Aborted);
        assert_eq!(new_etag().len(), 8);
        assert_eq!(empty_policy().etag, EMPTY_POLICY_ETAG);
    }
}
