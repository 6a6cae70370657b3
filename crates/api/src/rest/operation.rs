//! The name of what a REST request asks for, from its method and path's shape alone: the RPC it
//! transcodes onto (`DeviceManager.GetDevice`, `Publisher.Publish`, the same names as over gRPC),
//! or one of Ferrocore's own routes (`DeviceBridge.PublishEvent`, `ReadTopic`, `Healthz`,
//! `OAuth.Token`, the identity management's `IAM.*`...).
//!
//! The result is always one of a fixed set of `&'static str`, never anything taken from the
//! path, so it can label metrics and spans. Anything else is `unknown`.

use super::route::split_verb;
use axum::http::{HeaderMap, Method};

/// What a path matched none of.
pub const UNKNOWN: &str = "unknown";

/// The operation `method` on `path` (with its query string removed) stands for.
pub fn classify(method: &Method, headers: &HeaderMap, path: &str) -> &'static str {
    match path {
        "/healthz" => return "Healthz",
        "/metrics" => return "Metrics",
        "/token" => return "OAuth.Token",
        p if super::discovery::is_discovery_path(p) => return "Discovery",
        _ => {}
    }
    let Some(path) = path.strip_prefix("/v1/") else { return UNKNOWN };
    let overridden = headers.get("x-http-method-override").and_then(|v| v.to_str().ok());
    let m = match (method, overridden) {
        (&Method::POST, Some(o)) => Verb::of(o),
        (m, _) => Verb::of(m.as_str()),
    };
    match path {
        "sinks" => return "ListSinks",
        "status" => return "GetStatus",
        "cluster" => return "GetCluster",
        _ => {}
    }
    let (bare, verb) = split_verb(path);
    let mut s: Vec<&str> = bare.split('/').collect();
    if s.first() != Some(&"projects") {
        return UNKNOWN;
    }
    if s.len() == 2 && verb == Some("testIamPermissions") {
        return "Projects.TestIamPermissions";
    }
    if s.len() < 3 {
        return UNKNOWN;
    }
    if matches!(s[2], "topics" | "subscriptions" | "snapshots") {
        return pubsub(&s, m, verb);
    }
    if matches!(s[2], "tokens" | "serviceAccounts") {
        return if verb.is_some() { UNKNOWN } else { identities(&s, m) };
    }
    if s.len() < 5 || s[2] != "locations" || s[4] != "registries" {
        return UNKNOWN;
    }
    if s.len() >= 8 && s[6] == "groups" {
        s.drain(6..8);
    }
    use Verb::*;
    match (s.len(), s.get(6).copied(), s.get(8).copied(), m, verb) {
        (5, _, _, Get, None) => "DeviceManager.ListDeviceRegistries",
        (5, _, _, Post, None) => "DeviceManager.CreateDeviceRegistry",
        (6, _, _, Get, None) => "DeviceManager.GetDeviceRegistry",
        (6, _, _, Patch, None) => "DeviceManager.UpdateDeviceRegistry",
        (6, _, _, Delete, None) => "DeviceManager.DeleteDeviceRegistry",
        (6, _, _, Post, Some("bindDeviceToGateway")) => "DeviceManager.BindDeviceToGateway",
        (6, _, _, Post, Some("unbindDeviceFromGateway")) => "DeviceManager.UnbindDeviceFromGateway",
        (6, _, _, _, Some("getIamPolicy")) => "DeviceManager.GetIamPolicy",
        (6, _, _, _, Some("setIamPolicy")) => "DeviceManager.SetIamPolicy",
        (6, _, _, _, Some("testIamPermissions")) => "DeviceManager.TestIamPermissions",
        (7, Some("logs"), _, Get, None) => "ListDeviceLogs",
        (7, Some("devices"), _, Get, None) => "DeviceManager.ListDevices",
        (7, Some("devices"), _, Post, None) => "DeviceManager.CreateDevice",
        (8, Some("devices"), _, Get, None) => "DeviceManager.GetDevice",
        (8, Some("devices"), _, Patch, None) => "DeviceManager.UpdateDevice",
        (8, Some("devices"), _, Delete, None) => "DeviceManager.DeleteDevice",
        (8, Some("devices"), _, Post, Some("modifyCloudToDeviceConfig")) => "DeviceManager.ModifyCloudToDeviceConfig",
        (8, Some("devices"), _, Post, Some("sendCommandToDevice")) => "DeviceManager.SendCommandToDevice",
        (8, Some("devices"), _, Post, Some("publishEvent")) => "DeviceBridge.PublishEvent",
        (8, Some("devices"), _, Post, Some("setState")) => "DeviceBridge.SetState",
        (9, Some("devices"), Some("config"), Get, None) => "DeviceBridge.GetConfig",
        (9, Some("devices"), Some("configVersions"), Get, None) => "DeviceManager.ListDeviceConfigVersions",
        (9, Some("devices"), Some("states"), Get, None) => "DeviceManager.ListDeviceStates",
        (9, Some("devices"), Some("connection"), Get, None) => "GetDeviceConnection",
        _ => UNKNOWN,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl Verb {
    fn of(m: &str) -> Verb {
        match m.to_ascii_uppercase().as_str() {
            "GET" => Verb::Get,
            "POST" => Verb::Post,
            "PUT" => Verb::Put,
            "PATCH" => Verb::Patch,
            "DELETE" => Verb::Delete,
            _ => Verb::Other,
        }
    }
}

/// Pub/Sub's REST mapping, and Ferrocore's topic-log reads beside it.
fn pubsub(s: &[&str], m: Verb, verb: Option<&str>) -> &'static str {
    use Verb::*;
    let iam = |v: &str| match v {
        "getIamPolicy" => Some("IAMPolicy.GetIamPolicy"),
        "setIamPolicy" => Some("IAMPolicy.SetIamPolicy"),
        "testIamPermissions" => Some("IAMPolicy.TestIamPermissions"),
        _ => None,
    };
    match (s.len(), s[2], s.get(4).copied(), m, verb) {
        (3, "topics", _, Get, None) => "Publisher.ListTopics",
        (3, "subscriptions", _, Get, None) => "Subscriber.ListSubscriptions",
        (4, "topics" | "subscriptions", _, _, Some(v)) if iam(v).is_some() => iam(v).unwrap_or(UNKNOWN),
        (4, "topics", _, Put, None) => "Publisher.CreateTopic",
        (4, "topics", _, Get, None) => "Publisher.GetTopic",
        (4, "topics", _, Patch, None) => "Publisher.UpdateTopic",
        (4, "topics", _, Delete, None) => "Publisher.DeleteTopic",
        (4, "topics", _, Post, Some("publish")) => "Publisher.Publish",
        (5, "topics", Some("subscriptions"), Get, None) => "Publisher.ListTopicSubscriptions",
        (5, "topics", Some("snapshots"), Get, None) => "Publisher.ListTopicSnapshots",
        (5, "topics", Some("messages" | "extent"), Get, None) => "ReadTopic",
        (5, "topics", Some("stream"), Get, None) => "StreamTopic",
        (4, "subscriptions", _, Put, None) => "Subscriber.CreateSubscription",
        (4, "subscriptions", _, Get, None) => "Subscriber.GetSubscription",
        (4, "subscriptions", _, Patch, None) => "Subscriber.UpdateSubscription",
        (4, "subscriptions", _, Delete, None) => "Subscriber.DeleteSubscription",
        (4, "subscriptions", _, Post, Some("pull")) => "Subscriber.Pull",
        (4, "subscriptions", _, Post, Some("acknowledge")) => "Subscriber.Acknowledge",
        (4, "subscriptions", _, Post, Some("modifyAckDeadline")) => "Subscriber.ModifyAckDeadline",
        (4, "subscriptions", _, Post, Some("modifyPushConfig")) => "Subscriber.ModifyPushConfig",
        (4, "subscriptions", _, Post, Some("seek")) => "Subscriber.Seek",
        (4, "subscriptions", _, Post, Some("detach")) => "Publisher.DetachSubscription",
        _ => UNKNOWN,
    }
}

/// Ferrocore's management of API tokens and service accounts (names as Google's IAM API has them).
fn identities(s: &[&str], m: Verb) -> &'static str {
    use Verb::*;
    match (s.len(), s[2], s.get(4).copied(), m) {
        (3, "tokens", _, Post) => "IAM.CreateApiToken",
        (3, "tokens", _, Get) => "IAM.ListApiTokens",
        (4, "tokens", _, Delete) => "IAM.DeleteApiToken",
        (3, "serviceAccounts", _, Post) => "IAM.CreateServiceAccount",
        (3, "serviceAccounts", _, Get) => "IAM.ListServiceAccounts",
        (4, "serviceAccounts", _, Get) => "IAM.GetServiceAccount",
        (4, "serviceAccounts", _, Delete) => "IAM.DeleteServiceAccount",
        (5, "serviceAccounts", Some("keys"), Post) => "IAM.CreateServiceAccountKey",
        (5, "serviceAccounts", Some("keys"), Get) => "IAM.ListServiceAccountKeys",
        (6, "serviceAccounts", Some("keys"), Delete) => "IAM.DeleteServiceAccountKey",
        _ => UNKNOWN,
    }
}

/// The gRPC methods served, by path (without the leading `/`), with their `method` label.
pub const GRPC_METHODS: &[(&str, &str)] = &[
    ("google.cloud.iot.v1.DeviceManager/CreateDeviceRegistry", "DeviceManager.CreateDeviceRegistry"),
    ("google.cloud.iot.v1.DeviceManager/GetDeviceRegistry", "DeviceManager.GetDeviceRegistry"),
    ("google.cloud.iot.v1.DeviceManager/UpdateDeviceRegistry", "DeviceManager.UpdateDeviceRegistry"),
    ("google.cloud.iot.v1.DeviceManager/DeleteDeviceRegistry", "DeviceManager.DeleteDeviceRegistry"),
    ("google.cloud.iot.v1.DeviceManager/ListDeviceRegistries", "DeviceManager.ListDeviceRegistries"),
    ("google.cloud.iot.v1.DeviceManager/CreateDevice", "DeviceManager.CreateDevice"),
    ("google.cloud.iot.v1.DeviceManager/GetDevice", "DeviceManager.GetDevice"),
    ("google.cloud.iot.v1.DeviceManager/UpdateDevice", "DeviceManager.UpdateDevice"),
    ("google.cloud.iot.v1.DeviceManager/DeleteDevice", "DeviceManager.DeleteDevice"),
    ("google.cloud.iot.v1.DeviceManager/ListDevices", "DeviceManager.ListDevices"),
    ("google.cloud.iot.v1.DeviceManager/ModifyCloudToDeviceConfig", "DeviceManager.ModifyCloudToDeviceConfig"),
    ("google.cloud.iot.v1.DeviceManager/ListDeviceConfigVersions", "DeviceManager.ListDeviceConfigVersions"),
    ("google.cloud.iot.v1.DeviceManager/ListDeviceStates", "DeviceManager.ListDeviceStates"),
    ("google.cloud.iot.v1.DeviceManager/SendCommandToDevice", "DeviceManager.SendCommandToDevice"),
    ("google.cloud.iot.v1.DeviceManager/BindDeviceToGateway", "DeviceManager.BindDeviceToGateway"),
    ("google.cloud.iot.v1.DeviceManager/UnbindDeviceFromGateway", "DeviceManager.UnbindDeviceFromGateway"),
    ("google.cloud.iot.v1.DeviceManager/GetIamPolicy", "DeviceManager.GetIamPolicy"),
    ("google.cloud.iot.v1.DeviceManager/SetIamPolicy", "DeviceManager.SetIamPolicy"),
    ("google.cloud.iot.v1.DeviceManager/TestIamPermissions", "DeviceManager.TestIamPermissions"),
    ("google.pubsub.v1.Publisher/CreateTopic", "Publisher.CreateTopic"),
    ("google.pubsub.v1.Publisher/UpdateTopic", "Publisher.UpdateTopic"),
    ("google.pubsub.v1.Publisher/Publish", "Publisher.Publish"),
    ("google.pubsub.v1.Publisher/GetTopic", "Publisher.GetTopic"),
    ("google.pubsub.v1.Publisher/ListTopics", "Publisher.ListTopics"),
    ("google.pubsub.v1.Publisher/ListTopicSubscriptions", "Publisher.ListTopicSubscriptions"),
    ("google.pubsub.v1.Publisher/ListTopicSnapshots", "Publisher.ListTopicSnapshots"),
    ("google.pubsub.v1.Publisher/DeleteTopic", "Publisher.DeleteTopic"),
    ("google.pubsub.v1.Publisher/DetachSubscription", "Publisher.DetachSubscription"),
    ("google.pubsub.v1.Subscriber/CreateSubscription", "Subscriber.CreateSubscription"),
    ("google.pubsub.v1.Subscriber/GetSubscription", "Subscriber.GetSubscription"),
    ("google.pubsub.v1.Subscriber/UpdateSubscription", "Subscriber.UpdateSubscription"),
    ("google.pubsub.v1.Subscriber/ListSubscriptions", "Subscriber.ListSubscriptions"),
    ("google.pubsub.v1.Subscriber/DeleteSubscription", "Subscriber.DeleteSubscription"),
    ("google.pubsub.v1.Subscriber/ModifyAckDeadline", "Subscriber.ModifyAckDeadline"),
    ("google.pubsub.v1.Subscriber/Acknowledge", "Subscriber.Acknowledge"),
    ("google.pubsub.v1.Subscriber/Pull", "Subscriber.Pull"),
    ("google.pubsub.v1.Subscriber/StreamingPull", "Subscriber.StreamingPull"),
    ("google.pubsub.v1.Subscriber/ModifyPushConfig", "Subscriber.ModifyPushConfig"),
    ("google.pubsub.v1.Subscriber/GetSnapshot", "Subscriber.GetSnapshot"),
    ("google.pubsub.v1.Subscriber/ListSnapshots", "Subscriber.ListSnapshots"),
    ("google.pubsub.v1.Subscriber/CreateSnapshot", "Subscriber.CreateSnapshot"),
    ("google.pubsub.v1.Subscriber/UpdateSnapshot", "Subscriber.UpdateSnapshot"),
    ("google.pubsub.v1.Subscriber/DeleteSnapshot", "Subscriber.DeleteSnapshot"),
    ("google.pubsub.v1.Subscriber/Seek", "Subscriber.Seek"),
    ("google.iam.v1.IAMPolicy/SetIamPolicy", "IAMPolicy.SetIamPolicy"),
    ("google.iam.v1.IAMPolicy/GetIamPolicy", "IAMPolicy.GetIamPolicy"),
    ("google.iam.v1.IAMPolicy/TestIamPermissions", "IAMPolicy.TestIamPermissions"),
];

/// The method label of a gRPC call: `Service.Method` for the RPCs served, [`UNKNOWN`] for any
/// other path (a client may send any).
pub fn grpc_method(path: &str) -> &'static str {
    let full = path.strip_prefix('/').unwrap_or(path);
    GRPC_METHODS.iter().find(|(p, _)| *p == full).map_or(UNKNOWN, |(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(m: Method, path: &str) -> &'static str {
        classify(&m, &HeaderMap::new(), path)
    }

    #[test]
    fn rest_paths_name_their_rpc() {
        let dev = "/v1/projects/p/locations/l/registries/r/devices/d";
        assert_eq!(op(Method::GET, dev), "DeviceManager.GetDevice");
        assert_eq!(
            op(Method::GET, "/v1/projects/p/locations/l/registries/r/groups/g/devices/d"),
            "DeviceManager.GetDevice"
        );
        assert_eq!(op(Method::POST, &format!("{dev}:publishEvent")), "DeviceBridge.PublishEvent");
        assert_eq!(op(Method::GET, &format!("{dev}/config")), "DeviceBridge.GetConfig");
        assert_eq!(op(Method::POST, "/v1/projects/p/locations/l/registries"), "DeviceManager.CreateDeviceRegistry");
        assert_eq!(op(Method::GET, "/v1/projects/p/locations/l/registries/r/logs"), "ListDeviceLogs");
        assert_eq!(op(Method::POST, "/v1/projects/p/topics/t:publish"), "Publisher.Publish");
        assert_eq!(op(Method::GET, "/v1/projects/p/topics/t/messages"), "ReadTopic");
        assert_eq!(op(Method::POST, "/v1/projects/p/subscriptions/s:pull"), "Subscriber.Pull");
        assert_eq!(op(Method::GET, "/healthz"), "Healthz");
        assert_eq!(op(Method::GET, "/v1/sinks"), "ListSinks");
        assert_eq!(op(Method::POST, "/token"), "OAuth.Token");
        assert_eq!(op(Method::POST, "/v1/projects/p/tokens"), "IAM.CreateApiToken");
        assert_eq!(op(Method::DELETE, "/v1/projects/p/tokens/abc"), "IAM.DeleteApiToken");
        assert_eq!(
            op(Method::GET, "/v1/projects/p/serviceAccounts/a@p.iam.gserviceaccount.com"),
            "IAM.GetServiceAccount"
        );
        assert_eq!(
            op(Method::POST, "/v1/projects/p/serviceAccounts/a@p.iam.gserviceaccount.com/keys"),
            "IAM.CreateServiceAccountKey"
        );
        assert_eq!(
            op(Method::DELETE, "/v1/projects/p/serviceAccounts/a@p.iam.gserviceaccount.com/keys/k"),
            "IAM.DeleteServiceAccountKey"
        );
        assert_eq!(
            op(Method::POST, "/v1/projects/p/locations/l/registries/r:testIamPermissions"),
            "DeviceManager.TestIamPermissions"
        );
        let mut h = HeaderMap::new();
        h.insert("x-http-method-override", "PATCH".parse().unwrap());
        assert_eq!(classify(&Method::POST, &h, dev), "DeviceManager.UpdateDevice");
        for junk in [
            "/",
            "/v1/",
            "/v1/projects",
            "/v1/x/y/z",
            &format!("{dev}/zzz"),
            "/v1/projects/p/locations/l/registries/r:zzz",
        ] {
            assert_eq!(op(Method::GET, junk), UNKNOWN, "{junk}");
        }
    }

    #[test]
    fn grpc_methods_are_exactly_the_served_rpcs() {
        assert_eq!(grpc_method("/google.cloud.iot.v1.DeviceManager/GetDevice"), "DeviceManager.GetDevice");
        assert_eq!(grpc_method("/google.pubsub.v1.Subscriber/StreamingPull"), "Subscriber.StreamingPull");
        assert_eq!(grpc_method("/google.cloud.iot.v1.DeviceManager/Nope"), UNKNOWN);
        assert_eq!(grpc_method("/device-1234"), UNKNOWN);
        // Every rpc of the .proto files is listed, and nothing else.
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/proto/google");
        let mut from_protos = Vec::new();
        for (file, package) in [
            ("cloud/iot/v1/device_manager.proto", "google.cloud.iot.v1"),
            ("pubsub/v1/pubsub.proto", "google.pubsub.v1"),
            ("iam/v1/iam_policy.proto", "google.iam.v1"),
        ] {
            let text = std::fs::read_to_string(format!("{root}/{file}")).unwrap();
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(s) = line.strip_prefix("service ") {
                    service = s.split_whitespace().next().unwrap();
                } else if let Some(r) = line.strip_prefix("rpc ") {
                    let name = r.split('(').next().unwrap().trim();
                    from_protos.push(format!("{package}.{service}/{name}"));
                }
            }
        }
        let mut listed: Vec<String> = GRPC_METHODS.iter().map(|(p, _)| p.to_string()).collect();
        from_protos.sort();
        listed.sort();
        assert_eq!(listed, from_protos);
    }
}
