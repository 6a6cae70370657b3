//! Validated ids and resource names.
//!
//! Names parse from, and print to, Cloud IoT's resource paths:
//! `projects/{project}/locations/{location}/registries/{registry}/devices/{device}`. A device segment
//! may be the string id or the decimal numeric id; string ids must start with a letter, so an
//! all-digit segment is unambiguous.

use crate::Invalid;
use std::fmt;

/// Checks the id grammar shared by registries and devices: `[a-zA-Z][-a-zA-Z0-9._+~%]+`,
/// 3 to 255 characters, not starting with `goog`.
fn check_resource_id(field: &str, what: &str, s: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Err(Invalid::new(field, format!("Invalid {what} id '{}': {why}", printable(s))));
    if s.is_empty() {
        return Err(Invalid::new(field, format!("The {what} id must not be empty.")));
    }
    if s.len() < 3 || s.len() > 255 {
        return bad("it must be between 3 and 255 characters long.");
    }
    let mut chars = s.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return bad("it must start with a letter.");
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "-._+~%".contains(c)) {
        return bad("it may contain only letters, digits and the characters - . _ + ~ %.");
    }
    if s.len() >= 4 && s[..4].eq_ignore_ascii_case("goog") {
        return bad("it must not start with 'goog'.");
    }
    Ok(())
}

/// Shortens and escapes user input before it is echoed in an error message.
pub fn printable(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_default).collect();
    if s.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// A project or location segment: any non-empty run of visible characters without `/`.
fn check_namespace(field: &str, what: &str, s: &str) -> Result<(), Invalid> {
    if s.is_empty() || s.len() > 255 || s.chars().any(|c| c == '/' || c.is_control() || c.is_whitespace()) {
        return Err(Invalid::new(field, format!("Invalid {what} '{}'.", printable(s))));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $check:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates `s`; `field` names the input for the error message.
            pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
                ($check)(field, s)?;
                Ok(Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A project id. Any project id is accepted as a namespace.
    ProjectId,
    |f, s| check_namespace(f, "project", s)
);
string_id!(
    /// A location (region). Any location is accepted as a namespace.
    LocationId,
    |f, s| check_namespace(f, "location", s)
);
string_id!(
    /// A registry id, unique within its project and location.
    RegistryId,
    |f, s| check_resource_id(f, "registry", s)
);
string_id!(
    /// A device's user-chosen id, unique within its registry.
    DeviceId,
    |f, s| check_resource_id(f, "device", s)
);

/// A device's server-assigned numeric id, unique across the whole server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NumId(pub u64);

impl fmt::Display for NumId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A device named either way.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceRef {
    Id(DeviceId),
    Num(NumId),
}

impl DeviceRef {
    /// An all-digit segment is a numeric id; anything else must be a valid string id.
    pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(|n| DeviceRef::Num(NumId(n)))
                .map_err(|_| Invalid::new(field, format!("Invalid numeric device id '{}'.", printable(s))));
        }
        DeviceId::parse_field(field, s).map(DeviceRef::Id)
    }
}

impl fmt::Display for DeviceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceRef::Id(id) => id.fmt(f),
            DeviceRef::Num(n) => n.fmt(f),
        }
    }
}

/// `projects/{project}/locations/{location}`: the parent of registries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocationName {
    pub project: ProjectId,
    pub location: LocationId,
}

/// `projects/{project}/locations/{location}/registries/{registry}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryName {
    pub parent: LocationName,
    pub registry: RegistryId,
}

/// `projects/{project}/locations/{location}/registries/{registry}/devices/{device}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceName {
    pub registry: RegistryName,
    pub device: DeviceRef,
}

fn split_exact<'a, const N: usize>(s: &'a str, keywords: [&str; N]) -> Option<[&'a str; N]> {
    let mut parts = s.split('/');
    let mut out = [""; N];
    for (i, kw) in keywords.iter().enumerate() {
        if parts.next()? != *kw {
            return None;
        }
        out[i] = parts.next()?;
    }
    parts.next().is_none().then_some(out)
}

impl LocationName {
    pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
        let [p, l] = split_exact(s, ["projects", "locations"]).ok_or_else(|| {
            Invalid::new(
                field,
                format!("The field '{field}' must be in the form 'projects/{{project}}/locations/{{location}}'."),
            )
        })?;
        Ok(Self { project: ProjectId::parse_field(field, p)?, location: LocationId::parse_field(field, l)? })
    }
}

impl RegistryName {
    pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
        let [p, l, r] = split_exact(s, ["projects", "locations", "registries"]).ok_or_else(|| {
            Invalid::new(
                field,
                format!("The field '{field}' must be in the form 'projects/{{project}}/locations/{{location}}/registries/{{registry}}'."),
            )
        })?;
        Ok(Self {
            parent: LocationName {
                project: ProjectId::parse_field(field, p)?,
                location: LocationId::parse_field(field, l)?,
            },
            registry: RegistryId::parse_field(field, r)?,
        })
    }

    pub fn device(&self, device: DeviceRef) -> DeviceName {
        DeviceName { registry: self.clone(), device }
    }
}

impl DeviceName {
    pub fn parse_field(field: &str, s: &str) -> Result<Self, Invalid> {
        let [p, l, r, d] = split_exact(s, ["projects", "locations", "registries", "devices"]).ok_or_else(|| {
            Invalid::new(
                field,
                format!(
                    "The field '{field}' must be in the form 'projects/{{project}}/locations/{{location}}/registries/{{registry}}/devices/{{device}}'."
                ),
            )
        })?;
        Ok(Self {
            registry: RegistryName {
                parent: LocationName {
                    project: ProjectId::parse_field(field, p)?,
                    location: LocationId::parse_field(field, l)?,
                },
                registry: RegistryId::parse_field(field, r)?,
            },
            device: DeviceRef::parse_field(field, d)?,
        })
    }
}

impl fmt::Display for LocationName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "projects/{}/locations/{}", self.project, self.location)
    }
}

impl fmt::Display for RegistryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/registries/{}", self.parent, self.registry)
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/devices/{}", self.registry, self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_grammar() {
        for ok in ["abc", "a-b.c_d+e~f%g", &"x".repeat(255)] {
            assert!(DeviceId::parse_field("id", ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "1abc", "-abc", "ab/c", "a b", "google-thing", "GOOGx", &"x".repeat(256), "abcé"] {
            assert!(RegistryId::parse_field("id", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_names_accept_string_or_numeric_ids() {
        let n = DeviceName::parse_field("name", "projects/p/locations/l/registries/reg/devices/123").unwrap();
        assert_eq!(n.device, DeviceRef::Num(NumId(123)));
        assert_eq!(n.to_string(), "projects/p/locations/l/registries/reg/devices/123");
        let n = DeviceName::parse_field("name", "projects/p/locations/l/registries/reg/devices/dev1").unwrap();
        assert!(matches!(n.device, DeviceRef::Id(_)));
        assert!(DeviceName::parse_field("name", "projects/p/locations/l/registries/reg/devices").is_err());
        assert!(DeviceName::parse_field("name", "projects/p/locations/l/registries/reg/devices/d1/x").is_err());
        let e = LocationName::parse_field("parent", "projects/p").unwrap_err();
        assert!(e.message.contains("'parent' must be in the form"));
    }
}
