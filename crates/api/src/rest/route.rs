//! Parses a request's method and path into a typed [`Route`] before any handler runs.
//!
//! Paths follow the discovery document: `/v1/{+name}` with an optional `:verb` on the last segment.
//! Segments are percent-decoded, since ids may contain `%`. The `…/registries/R/groups/G/…` forms
//! of the proto's additional bindings address the same devices as `…/registries/R/…`.

use ferrocore_core::{Code, Error};
use ferrocore_model::{DeviceName, LocationName, RegistryName};
use percent_encoding::percent_decode_str;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    ListRegistries(LocationName),
    CreateRegistry(LocationName),
    GetRegistry(RegistryName),
    PatchRegistry(RegistryName),
    DeleteRegistry(RegistryName),
    BindDeviceToGateway(RegistryName),
    UnbindDeviceFromGateway(RegistryName),
    /// A registry's IAM policy (`google.iam.v1`), as Google's DeviceManager serves it.
    GetIamPolicy(RegistryName),
    SetIamPolicy(RegistryName),
    TestIamPermissions(RegistryName),
    ListDevices(RegistryName),
    CreateDevice(RegistryName),
    GetDevice(DeviceName),
    PatchDevice(DeviceName),
    DeleteDevice(DeviceName),
    ModifyConfig(DeviceName),
    SendCommand(DeviceName),
    ListConfigVersions(DeviceName),
    ListStates(DeviceName),
    /// The HTTP device bridge: authenticated by the device's own JWT, not the admin token.
    PublishEvent(DeviceName),
    SetState(DeviceName),
    GetConfig(DeviceName),
}

impl Route {
    /// Whether a device, rather than an administrator, calls this route.
    pub fn is_device_bridge(&self) -> bool {
        matches!(self, Route::PublishEvent(_) | Route::SetState(_) | Route::GetConfig(_))
    }
}

pub(crate) fn not_found(path: &str) -> Error {
    Error::not_found(format!(
        "The requested URL '{}' was not found on this server.",
        ferrocore_model::ids::printable(path)
    ))
}

/// Percent-decodes a path segment, except `%2F`, which Google's HTTP mapping leaves as it is in
/// multi-segment variables (so an encoded slash can never split a resource name).
pub(crate) fn decode(seg: &str) -> Result<String, Error> {
    let bad = || Error::invalid("name", "The resource name is not valid UTF-8.");
    let mut out = String::with_capacity(seg.len());
    for (i, part) in seg.split("%2F").enumerate() {
        for (j, piece) in part.split("%2f").enumerate() {
            if i > 0 && j == 0 {
                out.push_str("%2F");
            } else if j > 0 {
                out.push_str("%2f");
            }
            out.push_str(&percent_decode_str(piece).decode_utf8().map_err(|_| bad())?);
        }
    }
    Ok(out)
}

/// Splits the custom verb off the last segment: `a/b/c:verb` → (`a/b/c`, `verb`). Only the last
/// segment can carry one, so a project id with a `:` (`example.com:p`) stays whole.
pub(crate) fn split_verb(path: &str) -> (&str, Option<&str>) {
    match path.rsplit_once('/') {
        Some((head, last)) => match last.split_once(':') {
            Some((last, verb)) => (&path[..head.len() + 1 + last.len()], Some(verb)),
            None => (path, None),
        },
        None => (path, None),
    }
}

/// Whether `path` (everything after `/v1/`) has the shape of a device-bridge call: a device's
/// `:publishEvent` or `:setState`, or its `/config`. Only the shape is looked at, so that every
/// other path can have its caller checked before any id in it is parsed.
pub fn is_device_bridge_path(path: &str) -> bool {
    let (bare, verb) = split_verb(path);
    // Decoded as `parse` decodes, so an escaped `config` is told apart the same way there.
    let Ok(segs) = bare.split('/').map(decode).collect::<Result<Vec<_>, _>>() else { return false };
    let n = segs.len();
    if segs.first().map(String::as_str) != Some("projects") {
        return false;
    }
    match verb {
        Some("publishEvent" | "setState") => n >= 2 && segs[n - 2] == "devices",
        Some(_) => false,
        None => n >= 3 && segs[n - 1] == "config" && segs[n - 3] == "devices",
    }
}

/// Resolves `path` (everything after `/v1/`) for `method`.
pub fn parse(method: Method, path: &str) -> Result<Route, Error> {
    let (path, verb) = split_verb(path);
    let raw: Vec<&str> = path.split('/').collect();
    let mut segs = raw.iter().map(|s| decode(s)).collect::<Result<Vec<_>, _>>()?;
    // Groups were never released: `registries/R/groups/G/devices...` means `registries/R/devices...`.
    if segs.len() >= 8 && segs[4] == "registries" && segs[6] == "groups" {
        segs.drain(6..8);
    }
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let loc = |f: &str| LocationName::parse_field(f, &s[..4].join("/"));
    let reg = |f: &str| RegistryName::parse_field(f, &s[..6].join("/"));
    let dev = |f: &str| DeviceName::parse_field(f, &s[..8].join("/"));
    let unknown_verb = |v: &str| {
        Error::new(
            Code::NotFound,
            format!("The method ':{}' does not exist on this resource.", ferrocore_model::ids::printable(v)),
        )
    };
    if s.len() < 4 || s[0] != "projects" || s[2] != "locations" {
        return Err(not_found(path));
    }
    use Method::*;
    let route = match (s.len(), s.get(4).copied(), s.get(6).copied(), s.get(8).copied(), method, verb) {
        (5, Some("registries"), _, _, Get, None) => Route::ListRegistries(loc("parent")?),
        (5, Some("registries"), _, _, Post, None) => Route::CreateRegistry(loc("parent")?),
        (6, Some("registries"), _, _, Get, None) => Route::GetRegistry(reg("name")?),
        (6, Some("registries"), _, _, Patch, None) => Route::PatchRegistry(reg("device_registry.name")?),
        (6, Some("registries"), _, _, Delete, None) => Route::DeleteRegistry(reg("name")?),
        (6, Some("registries"), _, _, Post, Some("bindDeviceToGateway")) => Route::BindDeviceToGateway(reg("parent")?),
        (6, Some("registries"), _, _, Post, Some("unbindDeviceFromGateway")) => {
            Route::UnbindDeviceFromGateway(reg("parent")?)
        }
        (6, Some("registries"), _, _, Post, Some("getIamPolicy")) => Route::GetIamPolicy(reg("resource")?),
        (6, Some("registries"), _, _, Post, Some("setIamPolicy")) => Route::SetIamPolicy(reg("resource")?),
        (6, Some("registries"), _, _, Post, Some("testIamPermissions")) => Route::TestIamPermissions(reg("resource")?),
        (6, Some("registries"), _, _, _, Some(v)) => return Err(unknown_verb(v)),
        (7, Some("registries"), Some("devices"), _, Get, None) => Route::ListDevices(reg("parent")?),
        (7, Some("registries"), Some("devices"), _, Post, None) => Route::CreateDevice(reg("parent")?),
        (8, Some("registries"), Some("devices"), _, Get, None) => Route::GetDevice(dev("name")?),
        (8, Some("registries"), Some("devices"), _, Patch, None) => Route::PatchDevice(dev("device.name")?),
        (8, Some("registries"), Some("devices"), _, Delete, None) => Route::DeleteDevice(dev("name")?),
        (8, Some("registries"), Some("devices"), _, Post, Some("modifyCloudToDeviceConfig")) => {
            Route::ModifyConfig(dev("name")?)
        }
        (8, Some("registries"), Some("devices"), _, Post, Some("sendCommandToDevice")) => {
            Route::SendCommand(dev("name")?)
        }
        (8, Some("registries"), Some("devices"), _, Post, Some("publishEvent")) => Route::PublishEvent(dev("name")?),
        (8, Some("registries"), Some("devices"), _, Post, Some("setState")) => Route::SetState(dev("name")?),
        (8, Some("registries"), Some("devices"), _, _, Some(v)) => return Err(unknown_verb(v)),
        (9, Some("registries"), Some("devices"), Some("config"), Get, None) => Route::GetConfig(dev("name")?),
        (9, Some("registries"), Some("devices"), Some("configVersions"), Get, None) => {
            Route::ListConfigVersions(dev("name")?)
        }
        (9, Some("registries"), Some("devices"), Some("states"), Get, None) => Route::ListStates(dev("name")?),
        _ => return Err(not_found(path)),
    };
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = parse(Method::Post, "projects/p/locations/l/registries/reg/devices/dev%2B1:modifyCloudToDeviceConfig");
        let Ok(Route::ModifyConfig(n)) = r else { panic!("{r:?}") };
        assert_eq!(n.to_string(), "projects/p/locations/l/registries/reg/devices/dev+1");
        assert!(matches!(
            parse(Method::Get, "projects/p/locations/l/registries/reg/groups/g/devices/123"),
            Ok(Route::GetDevice(_))
        ));
        assert!(matches!(parse(Method::Get, "projects/my.com:p/locations/l/registries"), Ok(Route::ListRegistries(_))));
        let Ok(Route::GetDevice(n)) =
            parse(Method::Get, "projects/p/locations/l/registries/reg/devices/pct%2Fslash%25x")
        else {
            panic!()
        };
        assert_eq!(n.device.to_string(), "pct%2Fslash%x", "an encoded slash stays encoded; other escapes decode");
        assert!(matches!(
            parse(Method::Post, "projects/p/locations/l/registries/reg:bindDeviceToGateway"),
            Ok(Route::BindDeviceToGateway(_))
        ));
        assert!(matches!(
            parse(Method::Post, "projects/p/locations/l/registries/reg:testIamPermissions"),
            Ok(Route::TestIamPermissions(_))
        ));
        assert_eq!(
            parse(Method::Get, "projects/p/locations/l/registries/reg:getIamPolicy").unwrap_err().code,
            Code::NotFound
        );
        assert_eq!(parse(Method::Get, "projects/p/locations/l/registries/reg/x").unwrap_err().code, Code::NotFound);
        assert_eq!(parse(Method::Post, "projects/p/locations/l/registries/reg:nope").unwrap_err().code, Code::NotFound);
        assert_eq!(
            parse(Method::Get, "projects/p/locations/l/registries/1bad").unwrap_err().code,
            Code::InvalidArgument
        );
        assert_eq!(parse(Method::Get, "").unwrap_err().code, Code::NotFound);
    }

    #[test]
    fn device_bridge_shapes() {
        let dev = "projects/p/locations/l/registries/r/devices/d";
        for bridge in [
            format!("{dev}:publishEvent"),
            format!("{dev}:setState"),
            format!("{dev}/config"),
            format!("{dev}/conf%69g"),
            "projects/p/locations/l/registries/r/groups/g/devices/d:publishEvent".to_owned(),
            "projects/p/locations/l/registries/1bad/devices/d:setState".to_owned(),
        ] {
            assert!(is_device_bridge_path(&bridge), "{bridge}");
        }
        for admin in [
            dev.to_owned(),
            format!("{dev}:sendCommandToDevice"),
            format!("{dev}/configVersions"),
            format!("{dev}/states"),
            "projects/p/locations/l/registries/r:getIamPolicy".to_owned(),
            "projects/p/locations/l/registries/1bad".to_owned(),
            "config".to_owned(),
            "devices/d:publishEvent".to_owned(),
            String::new(),
        ] {
            assert!(!is_device_bridge_path(&admin), "{admin}");
        }
    }
}
