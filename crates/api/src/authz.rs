//! Who may call what, for every admin API (Cloud IoT REST and gRPC, Pub/Sub REST and gRPC,
//! Ferrocore's own endpoints): [`Access`] authenticates the caller with [`Iam`] and checks the
//! permission each method needs, as `docs/iam.md` lists them.
//!
//! The table is [`Call::needs`]: one `match` from a method (with the resource names its request
//! carries) to the permissions it needs and the resources they are checked on. The REST adapter
//! turns its parsed [`Route`] into a [`Call`] ([`Call::of_route`]) and the gRPC adapters build the
//! same [`Call`] from the request message, so the two protocols cannot disagree on who may do what.
//!
//! The owner (the admin token) skips every check without any lookup, so the admin path costs what
//! it did before identities existed. A principal's check happens once the names it needs are
//! parsed: a name that does not parse gets the handler's usual INVALID_ARGUMENT, while a caller
//! without the permission gets PERMISSION_DENIED whether or not the resource exists.

use crate::rest::route::Route;
use ferrocore_core::{Code, Error, Result};
use ferrocore_iam::{AuthError, Caller, Iam, Resource};
use ferrocore_model::pubsub::{SubscriptionName, TopicName};
use ferrocore_model::{DeviceName, LocationName, RegistryName};
use ferrocore_pubsub::PubSub;

/// A method of the admin APIs with the names its permission check is made on. Methods that need
/// no permission (`testIamPermissions`, which answers the subset held) or only the owner
/// (topic-log reads, sinks, tokens and service accounts) have none.
#[derive(Debug, Clone, Copy)]
pub enum Call<'a> {
    ListDeviceRegistries(&'a LocationName),
    CreateDeviceRegistry(&'a LocationName),
    GetDeviceRegistry(&'a RegistryName),
    UpdateDeviceRegistry(&'a RegistryName),
    DeleteDeviceRegistry(&'a RegistryName),
    GetIamPolicy(&'a RegistryName),
    SetIamPolicy(&'a RegistryName),
    BindDeviceToGateway(&'a RegistryName),
    UnbindDeviceFromGateway(&'a RegistryName),
    ListDevices(&'a RegistryName),
    CreateDevice(&'a RegistryName),
    GetDevice(&'a DeviceName),
    ListDeviceConfigVersions(&'a DeviceName),
    ListDeviceStates(&'a DeviceName),
    UpdateDevice(&'a DeviceName),
    DeleteDevice(&'a DeviceName),
    ModifyCloudToDeviceConfig(&'a DeviceName),
    SendCommandToDevice(&'a DeviceName),
    /// `GET .../registries/R/logs`, Ferrocore's device activity logs.
    ListDeviceLogs(&'a RegistryName),

    /// A project id.
    ListTopics(&'a str),
    CreateTopic(&'a TopicName),
    GetTopic(&'a TopicName),
    UpdateTopic(&'a TopicName),
    DeleteTopic(&'a TopicName),
    ListTopicSubscriptions(&'a TopicName),
    ListTopicSnapshots(&'a TopicName),
    Publish(&'a TopicName),
    /// Checked on the subscription's topic, which [`Access::check`] looks up.
    DetachSubscription(&'a SubscriptionName),
    /// A project id.
    ListSubscriptions(&'a str),
    /// The topic is None when the request names none (the engine refuses it then).
    CreateSubscription(&'a SubscriptionName, Option<&'a TopicName>),
    GetSubscription(&'a SubscriptionName),
    UpdateSubscription(&'a SubscriptionName),
    DeleteSubscription(&'a SubscriptionName),
    ModifyPushConfig(&'a SubscriptionName),
    Pull(&'a SubscriptionName),
    StreamingPull(&'a SubscriptionName),
    Acknowledge(&'a SubscriptionName),
    ModifyAckDeadline(&'a SubscriptionName),
    Seek(&'a SubscriptionName),
    GetTopicIamPolicy(&'a TopicName),
    SetTopicIamPolicy(&'a TopicName),
    GetSubscriptionIamPolicy(&'a SubscriptionName),
    SetSubscriptionIamPolicy(&'a SubscriptionName),
}

/// Where a permission is checked, before the names are filled in ([`Call::DetachSubscription`]'s
/// topic is found only at check time).
#[derive(Debug, Clone, Copy)]
enum On<'a> {
    Resource(Resource<'a>),
    TopicOf(&'a SubscriptionName),
}

impl<'a> Call<'a> {
    /// The table: what each method needs, and on what (docs/iam.md, "Which permission each
    /// method needs"). Most need one permission; CreateSubscription needs two.
    fn needs(self) -> [Option<(&'static str, On<'a>)>; 2] {
        use Call::*;
        let project = |p: &'a str| On::Resource(Resource::Project(p));
        let registry = |r: &'a RegistryName| On::Resource(Resource::Registry(r));
        // A device's permissions are held on its registry.
        let device = |d: &'a DeviceName| On::Resource(Resource::Registry(&d.registry));
        let topic = |t: &'a TopicName| On::Resource(Resource::Topic(t));
        let sub = |s: &'a SubscriptionName| On::Resource(Resource::Subscription(s));
        let one = |permission: &'static str, on: On<'a>| [Some((permission, on)), None];
        match self {
            ListDeviceRegistries(l) => one("cloudiot.registries.list", project(l.project.as_str())),
            CreateDeviceRegistry(l) => one("cloudiot.registries.create", project(l.project.as_str())),
            GetDeviceRegistry(r) => one("cloudiot.registries.get", registry(r)),
            UpdateDeviceRegistry(r) => one("cloudiot.registries.update", registry(r)),
            DeleteDeviceRegistry(r) => one("cloudiot.registries.delete", registry(r)),
            GetIamPolicy(r) => one("cloudiot.registries.getIamPolicy", registry(r)),
            SetIamPolicy(r) => one("cloudiot.registries.setIamPolicy", registry(r)),
            BindDeviceToGateway(r) => one("cloudiot.devices.bindGateway", registry(r)),
            UnbindDeviceFromGateway(r) => one("cloudiot.devices.unbindGateway", registry(r)),
            ListDevices(r) => one("cloudiot.devices.list", registry(r)),
            CreateDevice(r) => one("cloudiot.devices.create", registry(r)),
            GetDevice(d) | ListDeviceConfigVersions(d) | ListDeviceStates(d) => one("cloudiot.devices.get", device(d)),
            UpdateDevice(d) => one("cloudiot.devices.update", device(d)),
            DeleteDevice(d) => one("cloudiot.devices.delete", device(d)),
            ModifyCloudToDeviceConfig(d) => one("cloudiot.devices.updateConfig", device(d)),
            SendCommandToDevice(d) => one("cloudiot.devices.sendCommand", device(d)),
            ListDeviceLogs(r) => one("cloudiot.devices.get", registry(r)),

            ListTopics(p) => one("pubsub.topics.list", project(p)),
            CreateTopic(t) => one("pubsub.topics.create", project(t.project())),
            GetTopic(t) | ListTopicSubscriptions(t) | ListTopicSnapshots(t) => one("pubsub.topics.get", topic(t)),
            UpdateTopic(t) => one("pubsub.topics.update", topic(t)),
            DeleteTopic(t) => one("pubsub.topics.delete", topic(t)),
            Publish(t) => one("pubsub.topics.publish", topic(t)),
            DetachSubscription(s) => one("pubsub.topics.detachSubscription", On::TopicOf(s)),
            ListSubscriptions(p) => one("pubsub.subscriptions.list", project(p)),
            CreateSubscription(s, t) => [
                Some(("pubsub.subscriptions.create", project(s.project()))),
                t.map(|t| ("pubsub.topics.attachSubscription", topic(t))),
            ],
            GetSubscription(s) => one("pubsub.subscriptions.get", sub(s)),
            UpdateSubscription(s) | ModifyPushConfig(s) => one("pubsub.subscriptions.update", sub(s)),
            DeleteSubscription(s) => one("pubsub.subscriptions.delete", sub(s)),
            Pull(s) | StreamingPull(s) | Acknowledge(s) | ModifyAckDeadline(s) | Seek(s) => {
                one("pubsub.subscriptions.consume", sub(s))
            }
            GetTopicIamPolicy(t) => one("pubsub.topics.getIamPolicy", topic(t)),
            SetTopicIamPolicy(t) => one("pubsub.topics.setIamPolicy", topic(t)),
            GetSubscriptionIamPolicy(s) => one("pubsub.subscriptions.getIamPolicy", sub(s)),
            SetSubscriptionIamPolicy(s) => one("pubsub.subscriptions.setIamPolicy", sub(s)),
        }
    }

    /// The Cloud IoT call a REST route stands for; None for the routes that need no permission
    /// (`testIamPermissions`) or a device's own JWT (the device bridge).
    pub fn of_route(route: &'a Route) -> Option<Self> {
        use Call::*;
        Some(match route {
            Route::ListRegistries(l) => ListDeviceRegistries(l),
            Route::CreateRegistry(l) => CreateDeviceRegistry(l),
            Route::GetRegistry(r) => GetDeviceRegistry(r),
            Route::PatchRegistry(r) => UpdateDeviceRegistry(r),
            Route::DeleteRegistry(r) => DeleteDeviceRegistry(r),
            Route::GetIamPolicy(r) => GetIamPolicy(r),
            Route::SetIamPolicy(r) => SetIamPolicy(r),
            Route::TestIamPermissions(_) => return None,
            Route::BindDeviceToGateway(r) => BindDeviceToGateway(r),
            Route::UnbindDeviceFromGateway(r) => UnbindDeviceFromGateway(r),
            Route::ListDevices(r) => ListDevices(r),
            Route::CreateDevice(r) => CreateDevice(r),
            Route::GetDevice(d) => GetDevice(d),
            Route::PatchDevice(d) => UpdateDevice(d),
            Route::DeleteDevice(d) => DeleteDevice(d),
            Route::ModifyConfig(d) => ModifyCloudToDeviceConfig(d),
            Route::SendCommand(d) => SendCommandToDevice(d),
            Route::ListConfigVersions(d) => ListDeviceConfigVersions(d),
            Route::ListStates(d) => ListDeviceStates(d),
            Route::PublishEvent(_) | Route::SetState(_) | Route::GetConfig(_) => return None,
        })
    }
}

/// How a caller is authenticated and authorized: [`Iam`], the Pub/Sub engine (to find a
/// subscription's topic), and whether `--pubsub-anonymous` lets credential-less Pub/Sub calls in.
/// Cheap to clone; one is shared by every listener.
#[derive(Clone)]
pub struct Access {
    iam: Iam,
    pubsub: PubSub,
    pubsub_anonymous: bool,
}

impl Access {
    pub fn new(iam: Iam, pubsub: PubSub, pubsub_anonymous: bool) -> Self {
        Self { iam, pubsub, pubsub_anonymous }
    }

    pub fn iam(&self) -> &Iam {
        &self.iam
    }

    /// Who presents `authorization` (the raw `Authorization` header or metadata value).
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> std::result::Result<Caller, AuthError> {
        let who = self.iam.authenticate(authorization);
        if let Err(AuthError::Invalid(reason)) = &who {
            // The reason never repeats the credential.
            tracing::debug!(reason, "refused a credential");
        }
        who
    }

    /// Who calls the Pub/Sub API. With `--pubsub-anonymous`, a call without any `Authorization`
    /// is let in as the owner, which on the Pub/Sub API is what such calls always were: allowed
    /// everything there. A call that carries a credential is authenticated as any other.
    pub fn authenticate_pubsub(&self, authorization: Option<&[u8]>) -> std::result::Result<Caller, AuthError> {
        match authorization {
            None if self.pubsub_anonymous => Ok(Caller::Owner),
            _ => self.authenticate(authorization),
        }
    }

    /// `Ok` when `caller` may make `call`; PERMISSION_DENIED otherwise. The owner passes without
    /// any lookup.
    pub async fn check(&self, caller: &Caller, call: Call<'_>) -> Result<()> {
        if matches!(caller, Caller::Owner) {
            return Ok(());
        }
        for (permission, on) in call.needs().into_iter().flatten() {
            match on {
                On::Resource(resource) => self.iam.check(caller, permission, resource).await?,
                On::TopicOf(sub) => {
                    // A subscription whose topic is gone (or that does not exist) is checked on
                    // itself: the answer is then PERMISSION_DENIED or the handler's NOT_FOUND.
                    let topic = match self.pubsub.get_subscription(sub).await {
                        Ok(s) => s.topic,
                        Err(e) if e.code == Code::NotFound => None,
                        Err(e) => return Err(e),
                    };
                    match &topic {
                        Some(t) => self.iam.check(caller, permission, Resource::Topic(t)).await?,
                        None => self.iam.check(caller, permission, Resource::Subscription(sub)).await?,
                    }
                }
            }
        }
        Ok(())
    }

    /// The subset of `asked` that `caller` holds on a Pub/Sub `resource`, for
    /// `testIamPermissions` once the engine has checked the resource and the permissions' form.
    /// A well-formed permission no role grants is simply not held.
    pub async fn held_pubsub(
        &self,
        caller: &Caller,
        resource: Resource<'_>,
        asked: Vec<String>,
    ) -> Result<Vec<String>> {
        if matches!(caller, Caller::Owner) {
            return Ok(asked);
        }
        let known: Vec<String> = asked.into_iter().filter(|p| ferrocore_iam::roles::is_permission(p)).collect();
        if known.is_empty() {
            return Ok(known);
        }
        self.iam.held(caller, resource, &known).await
    }
}

/// Refuses everyone but the owner; `what` completes "... requires the admin token."
pub fn owner_only(caller: &Caller, what: &str) -> Result<()> {
    match caller {
        Caller::Owner => Ok(()),
        Caller::Principal(_) => Err(Error::new(Code::PermissionDenied, format!("{what} requires the admin token."))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rest::route::{self, Method};

    fn permissions(call: Call<'_>) -> Vec<&'static str> {
        call.needs().into_iter().flatten().map(|(p, _)| p).collect()
    }

    #[test]
    fn every_permission_of_the_table_is_one_some_role_grants() {
        let reg = RegistryName::parse_field("name", "projects/p/locations/l/registries/reg").unwrap();
        let dev = DeviceName::parse_field("name", "projects/p/locations/l/registries/reg/devices/dev").unwrap();
        let loc = reg.parent.clone();
        let t = TopicName::parse("topic", "projects/p/topics/top").unwrap();
        let s = SubscriptionName::parse("subscription", "projects/p/subscriptions/sub").unwrap();
        use Call::*;
        let calls = [
            ListDeviceRegistries(&loc),
            CreateDeviceRegistry(&loc),
            GetDeviceRegistry(&reg),
            UpdateDeviceRegistry(&reg),
            DeleteDeviceRegistry(&reg),
            GetIamPolicy(&reg),
            SetIamPolicy(&reg),
            BindDeviceToGateway(&reg),
            UnbindDeviceFromGateway(&reg),
            ListDevices(&reg),
            CreateDevice(&reg),
            GetDevice(&dev),
            ListDeviceConfigVersions(&dev),
            ListDeviceStates(&dev),
            UpdateDevice(&dev),
            DeleteDevice(&dev),
            ModifyCloudToDeviceConfig(&dev),
            SendCommandToDevice(&dev),
            ListDeviceLogs(&reg),
            ListTopics("p"),
            CreateTopic(&t),
            GetTopic(&t),
            UpdateTopic(&t),
            DeleteTopic(&t),
            ListTopicSubscriptions(&t),
            ListTopicSnapshots(&t),
            Publish(&t),
            DetachSubscription(&s),
            ListSubscriptions("p"),
            CreateSubscription(&s, Some(&t)),
            GetSubscription(&s),
            UpdateSubscription(&s),
            DeleteSubscription(&s),
            ModifyPushConfig(&s),
            Pull(&s),
            StreamingPull(&s),
            Acknowledge(&s),
            ModifyAckDeadline(&s),
            Seek(&s),
            GetTopicIamPolicy(&t),
            SetTopicIamPolicy(&t),
            GetSubscriptionIamPolicy(&s),
            SetSubscriptionIamPolicy(&s),
        ];
        for call in calls {
            let needed = permissions(call);
            assert!(!needed.is_empty(), "{call:?}");
            for p in needed {
                assert!(ferrocore_iam::roles::is_permission(p), "{call:?}: {p}");
            }
        }
        assert_eq!(
            permissions(CreateSubscription(&s, Some(&t))),
            ["pubsub.subscriptions.create", "pubsub.topics.attachSubscription"]
        );
        assert_eq!(permissions(CreateSubscription(&s, None)), ["pubsub.subscriptions.create"]);
    }

    #[test]
    fn rest_routes_map_onto_the_calls_grpc_makes() {
        let reg = "projects/p/locations/l/registries/reg";
        let cases = [
            (Method::Get, "projects/p/locations/l/registries".to_owned(), Some("cloudiot.registries.list")),
            (Method::Post, format!("{reg}:getIamPolicy"), Some("cloudiot.registries.getIamPolicy")),
            (Method::Post, format!("{reg}:setIamPolicy"), Some("cloudiot.registries.setIamPolicy")),
            (Method::Post, format!("{reg}:testIamPermissions"), None),
            (Method::Post, format!("{reg}:bindDeviceToGateway"), Some("cloudiot.devices.bindGateway")),
            (Method::Get, format!("{reg}/devices/dev/states"), Some("cloudiot.devices.get")),
            (Method::Patch, format!("{reg}/devices/dev"), Some("cloudiot.devices.update")),
            (Method::Post, format!("{reg}/devices/dev:sendCommandToDevice"), Some("cloudiot.devices.sendCommand")),
            (Method::Post, format!("{reg}/devices/dev:publishEvent"), None),
        ];
        for (method, path, want) in cases {
            let route = route::parse(method, &path).unwrap();
            let got = Call::of_route(&route).map(|c| permissions(c)[0]);
            assert_eq!(got, want, "{method:?} {path}");
        }
    }

    #[test]
    fn only_the_owner_passes_owner_only_routes() {
        assert!(owner_only(&Caller::Owner, "Listing sinks").is_ok());
        let principal = Caller::Principal(std::sync::Arc::new(ferrocore_iam::Principal {
            member: "user:a@example.com".into(),
            grants: Vec::new(),
        }));
        let e = owner_only(&principal, "Listing sinks").unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (Code::PermissionDenied, "Listing sinks requires the admin token."));
    }
}
