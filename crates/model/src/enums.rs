//! The API's enums, each with its proto name and number.
//!
//! Clients send either form: names in ordinary JSON, numbers from google-cloud-iot's REST transport
//! (`enum-encoding=int`). Both parse here; output always uses the name.

/// What every API enum offers, so wire formats can treat them alike.
pub trait ApiEnum: Copy + Default + Sized + 'static {
    fn name(self) -> &'static str;
    fn number(self) -> i32;
    fn from_name(s: &str) -> Option<Self>;
    fn from_number(n: i32) -> Option<Self>;
    /// Parses either the name or the decimal number.
    fn parse(s: &str) -> Option<Self> {
        Self::from_name(s).or_else(|| s.parse::<i32>().ok().and_then(Self::from_number))
    }
}

macro_rules! api_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal = $num:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
        #[serde(into = "i32", try_from = "i32")]
        pub enum $name {
            #[default]
            $($variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The proto enum value name, as JSON output uses it.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The proto enum number.
            pub fn number(self) -> i32 {
                match self { $($name::$variant => $num),+ }
            }

            pub fn from_name(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn from_number(n: i32) -> Option<Self> {
                match n { $($num => Some($name::$variant),)+ _ => None }
            }

            /// Parses either the name or the decimal number.
            pub fn parse(s: &str) -> Option<Self> {
                <Self as ApiEnum>::parse(s)
            }
        }

        impl ApiEnum for $name {
            fn name(self) -> &'static str { $name::name(self) }
            fn number(self) -> i32 { $name::number(self) }
            fn from_name(s: &str) -> Option<Self> { $name::from_name(s) }
            fn from_number(n: i32) -> Option<Self> { $name::from_number(n) }
        }

        impl From<$name> for i32 {
            fn from(v: $name) -> i32 { v.number() }
        }

        impl TryFrom<i32> for $name {
            type Error = String;
            fn try_from(n: i32) -> Result<Self, String> {
                Self::from_number(n).ok_or_else(|| format!("unknown {} value {n}", stringify!($name)))
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

api_enum!(
    /// Encoding of a device public key. The numbers are not in name order: they follow the proto.
    PublicKeyFormat {
        Unspecified = "UNSPECIFIED_PUBLIC_KEY_FORMAT" = 0,
        RsaX509Pem = "RSA_X509_PEM" = 1,
        Es256Pem = "ES256_PEM" = 2,
        RsaPem = "RSA_PEM" = 3,
        Es256X509Pem = "ES256_X509_PEM" = 4,
    }
);

impl PublicKeyFormat {
    /// Whether the key is wrapped in an X.509 certificate.
    pub fn is_x509(self) -> bool {
        matches!(self, Self::RsaX509Pem | Self::Es256X509Pem)
    }
}

api_enum!(
    /// Encoding of a registry CA certificate.
    PublicKeyCertificateFormat {
        Unspecified = "UNSPECIFIED_PUBLIC_KEY_CERTIFICATE_FORMAT" = 0,
        X509CertificatePem = "X509_CERTIFICATE_PEM" = 1,
    }
);

api_enum!(
    /// Device activity logging level; unspecified means "off" on a registry and "inherit" on a device.
    LogLevel {
        Unspecified = "LOG_LEVEL_UNSPECIFIED" = 0,
        None = "NONE" = 10,
        Error = "ERROR" = 20,
        Info = "INFO" = 30,
        Debug = "DEBUG" = 40,
    }
);

api_enum!(
    /// Whether a registry's devices may use the MQTT bridge; unspecified means enabled.
    MqttState {
        Unspecified = "MQTT_STATE_UNSPECIFIED" = 0,
        Enabled = "MQTT_ENABLED" = 1,
        Disabled = "MQTT_DISABLED" = 2,
    }
);

api_enum!(
    /// Whether a registry's devices may use the HTTP bridge; unspecified means enabled.
    HttpState {
        Unspecified = "HTTP_STATE_UNSPECIFIED" = 0,
        Enabled = "HTTP_ENABLED" = 1,
        Disabled = "HTTP_DISABLED" = 2,
    }
);

api_enum!(
    /// Gateway or not; unspecified means a non-gateway device.
    GatewayType {
        Unspecified = "GATEWAY_TYPE_UNSPECIFIED" = 0,
        Gateway = "GATEWAY" = 1,
        NonGateway = "NON_GATEWAY" = 2,
    }
);

impl GatewayType {
    pub fn is_gateway(self) -> bool {
        self == Self::Gateway
    }
}

api_enum!(
    /// How devices behind a gateway authenticate.
    GatewayAuthMethod {
        Unspecified = "GATEWAY_AUTH_METHOD_UNSPECIFIED" = 0,
        AssociationOnly = "ASSOCIATION_ONLY" = 1,
        DeviceAuthTokenOnly = "DEVICE_AUTH_TOKEN_ONLY" = 2,
        AssociationAndDeviceAuthToken = "ASSOCIATION_AND_DEVICE_AUTH_TOKEN" = 3,
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_formats_follow_proto_numbers() {
        assert_eq!(PublicKeyFormat::parse("3"), Some(PublicKeyFormat::RsaPem));
        assert_eq!(PublicKeyFormat::parse("RSA_X509_PEM").map(i32::from), Some(1));
        assert_eq!(PublicKeyFormat::parse("rsa_pem"), None);
        assert_eq!(LogLevel::from_number(40), Some(LogLevel::Debug));
        assert_eq!(LogLevel::from_number(4), None);
    }
}
