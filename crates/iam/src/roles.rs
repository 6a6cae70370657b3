//! The predefined roles and the permissions each grants, as Cloud IoT Core and Pub/Sub defined
//! them. Custom roles do not exist here: a policy binding or a token names one of these.

/// Cloud IoT permissions, narrowest role first; each role holds its own and every earlier one's.
const IOT_VIEWER: &[&str] =
    &["cloudiot.registries.get", "cloudiot.registries.list", "cloudiot.devices.get", "cloudiot.devices.list"];
const IOT_DEVICE_CONTROLLER: &[&str] = &["cloudiot.devices.updateConfig", "cloudiot.devices.sendCommand"];
/// Gateway binding changes which devices a gateway may speak for: device provisioning.
const IOT_PROVISIONER: &[&str] = &[
    "cloudiot.devices.create",
    "cloudiot.devices.delete",
    "cloudiot.devices.update",
    "cloudiot.devices.bindGateway",
    "cloudiot.devices.unbindGateway",
];
const IOT_EDITOR: &[&str] = &["cloudiot.registries.create", "cloudiot.registries.delete", "cloudiot.registries.update"];
const IOT_ADMIN: &[&str] = &["cloudiot.registries.getIamPolicy", "cloudiot.registries.setIamPolicy"];

const PUBSUB_VIEWER: &[&str] = &[
    "pubsub.topics.get",
    "pubsub.topics.list",
    "pubsub.subscriptions.get",
    "pubsub.subscriptions.list",
    "pubsub.snapshots.get",
    "pubsub.snapshots.list",
    "pubsub.schemas.get",
    "pubsub.schemas.list",
];
const PUBSUB_PUBLISHER: &[&str] = &["pubsub.topics.publish"];
const PUBSUB_SUBSCRIBER: &[&str] =
    &["pubsub.subscriptions.consume", "pubsub.topics.attachSubscription", "pubsub.snapshots.seek"];
const PUBSUB_EDITOR_OWN: &[&str] = &[
    "pubsub.topics.create",
    "pubsub.topics.delete",
    "pubsub.topics.update",
    "pubsub.topics.detachSubscription",
    "pubsub.subscriptions.create",
    "pubsub.subscriptions.delete",
    "pubsub.subscriptions.update",
    "pubsub.snapshots.create",
    "pubsub.snapshots.delete",
    "pubsub.snapshots.update",
];
const PUBSUB_ADMIN: &[&str] = &[
    "pubsub.topics.getIamPolicy",
    "pubsub.topics.setIamPolicy",
    "pubsub.subscriptions.getIamPolicy",
    "pubsub.subscriptions.setIamPolicy",
    "pubsub.snapshots.getIamPolicy",
    "pubsub.snapshots.setIamPolicy",
];

/// Every role a token, a service account or a policy binding may name.
pub const ROLES: &[&str] = &[
    "roles/cloudiot.viewer",
    "roles/cloudiot.deviceController",
    "roles/cloudiot.provisioner",
    "roles/cloudiot.editor",
    "roles/cloudiot.admin",
    "roles/pubsub.viewer",
    "roles/pubsub.publisher",
    "roles/pubsub.subscriber",
    "roles/pubsub.editor",
    "roles/pubsub.admin",
];

/// The permission groups a role is made of.
fn parts(role: &str) -> Option<&'static [&'static [&'static str]]> {
    Some(match role {
        "roles/cloudiot.viewer" => &[IOT_VIEWER],
        "roles/cloudiot.deviceController" => &[IOT_VIEWER, IOT_DEVICE_CONTROLLER],
        "roles/cloudiot.provisioner" => &[IOT_VIEWER, IOT_DEVICE_CONTROLLER, IOT_PROVISIONER],
        "roles/cloudiot.editor" => &[IOT_VIEWER, IOT_DEVICE_CONTROLLER, IOT_PROVISIONER, IOT_EDITOR],
        "roles/cloudiot.admin" => &[IOT_VIEWER, IOT_DEVICE_CONTROLLER, IOT_PROVISIONER, IOT_EDITOR, IOT_ADMIN],
        "roles/pubsub.viewer" => &[PUBSUB_VIEWER],
        "roles/pubsub.publisher" => &[PUBSUB_PUBLISHER],
        "roles/pubsub.subscriber" => &[PUBSUB_SUBSCRIBER],
        "roles/pubsub.editor" => &[PUBSUB_VIEWER, PUBSUB_PUBLISHER, PUBSUB_SUBSCRIBER, PUBSUB_EDITOR_OWN],
        "roles/pubsub.admin" => &[PUBSUB_VIEWER, PUBSUB_PUBLISHER, PUBSUB_SUBSCRIBER, PUBSUB_EDITOR_OWN, PUBSUB_ADMIN],
        _ => return None,
    })
}

/// Whether `role` is one of [`ROLES`].
pub fn is_role(role: &str) -> bool {
    parts(role).is_some()
}

/// Whether `role` grants `permission` (false for an unknown role).
pub fn grants(role: &str, permission: &str) -> bool {
    parts(role).is_some_and(|groups| groups.iter().any(|g| g.contains(&permission)))
}

/// Every permission `role` grants (empty for an unknown role).
pub fn permissions(role: &str) -> impl Iterator<Item = &'static str> {
    parts(role).unwrap_or(&[]).iter().flat_map(|g| g.iter().copied())
}

/// Whether `permission` is one some role grants: what `testIamPermissions` may ask about.
pub fn is_permission(permission: &str) -> bool {
    ROLES.iter().any(|r| grants(r, permission))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_as_iot_core_documented_them() {
        assert!(grants("roles/cloudiot.viewer", "cloudiot.devices.get"));
        assert!(!grants("roles/cloudiot.viewer", "cloudiot.devices.updateConfig"));
        assert!(grants("roles/cloudiot.deviceController", "cloudiot.devices.sendCommand"));
        assert!(!grants("roles/cloudiot.deviceController", "cloudiot.devices.create"));
        assert!(grants("roles/cloudiot.provisioner", "cloudiot.devices.delete"));
        assert!(!grants("roles/cloudiot.provisioner", "cloudiot.registries.delete"));
        assert!(grants("roles/cloudiot.editor", "cloudiot.registries.create"));
        assert!(!grants("roles/cloudiot.editor", "cloudiot.registries.setIamPolicy"));
        assert!(grants("roles/cloudiot.admin", "cloudiot.registries.setIamPolicy"));
        assert!(grants("roles/pubsub.editor", "pubsub.topics.create"));
        assert!(!grants("roles/pubsub.editor", "pubsub.topics.setIamPolicy"));
        assert!(!grants("roles/pubsub.subscriber", "pubsub.topics.publish"));
        assert!(!grants("roles/owner", "cloudiot.devices.get"));
        assert!(is_permission("pubsub.subscriptions.consume") && !is_permission("cloudiot.devices.fly"));
        for r in ROLES {
            assert!(is_role(r) && permissions(r).count() > 0, "{r}");
        }
    }
}
