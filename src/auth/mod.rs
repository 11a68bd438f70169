//! Who may connect and what they may publish (sans-IO): Mosquitto password files
//! ([`passwd`]), Mosquitto ACL files ([`acl`]), the client certificate's CN ([`cert`]), and the
//! rule that picks a connection's device identity. The MQTT session asks [`Authenticator`] at
//! CONNECT and for each PUBLISH topic; it does no IO of its own (files are read by `load`).

pub mod acl;
pub mod cert;
pub mod grpc;
pub mod passwd;
pub mod tokens;

use std::path::Path;
use std::sync::Arc;

pub use acl::Acl;
pub use grpc::{Caller, GrpcPolicy, GrpcRefused};
pub use passwd::PasswordFile;
pub use tokens::Tokens;

/// What becomes a connection's `device_id` (when its topic names none); the config value
/// `mqtt.auth.identity` is its snake_case name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Identity {
    /// The MQTT client id.
    #[default]
    ClientId,
    /// The authenticated user name (password file user, else the certificate CN).
    Username,
    /// The CN of the verified client certificate (mTLS).
    CertCn,
}

/// Why CONNECT was refused (each is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Unknown user or wrong password.
    BadCredentials,
    /// No credentials, and anonymous access is off.
    Anonymous,
    /// The configured identity is missing (no user name, no client certificate).
    NoIdentity,
}

impl Refused {
    /// For logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadCredentials => "bad user name or password",
            Self::Anonymous => "anonymous access is off",
            Self::NoIdentity => "the configured identity is missing",
        }
    }
}

/// Why a PUBLISH was refused (each is counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Denied {
    /// The ACL grants no write access to the topic.
    Acl,
    /// Without an ACL, the topic's `{device_id}` level names another device.
    DeviceClaim,
}

/// What CONNECT presented.
#[derive(Clone, Copy, Debug, Default)]
pub struct Credentials<'a> {
    /// Client id (after assignment).
    pub client_id: &'a str,
    /// User name from CONNECT.
    pub username: Option<&'a str>,
    /// Password from CONNECT.
    pub password: Option<&'a [u8]>,
    /// CN of the client certificate rustls verified (mTLS), if any.
    pub cert_cn: Option<&'a str>,
}

/// An accepted connection's identity.
#[derive(Clone, Debug)]
pub struct Principal {
    /// Verified user name: the password file's user, else the certificate CN. ACL `user`
    /// sections and `%u` use it; an unverified user name is never used.
    pub user: Option<Arc<str>>,
    /// The device id of rows whose topic names none.
    pub device: Arc<str>,
    /// Whether the client proved who it is (password or certificate).
    pub authenticated: bool,
}

/// The authentication and authorization policy of the MQTT listeners.
#[derive(Debug, Default)]
pub struct Authenticator {
    passwords: Option<PasswordFile>,
    acl: Option<Arc<Acl>>,
    allow_anonymous: bool,
    identity: Identity,
}

/// A policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

impl Authenticator {
    /// A policy from parsed parts.
    pub fn new(
        passwords: Option<PasswordFile>,
        acl: Option<Acl>,
        allow_anonymous: bool,
        identity: Identity,
    ) -> Self {
        Self {
            passwords,
            acl: acl.map(Arc::new),
            allow_anonymous,
            identity,
        }
    }

    /// The ACL, if one is configured (the broker checks every delivery against it).
    pub fn acl(&self) -> Option<Arc<Acl>> {
        self.acl.clone()
    }

    /// Decides a SUBSCRIBE filter (taken literally against the ACL's read rules); without an
    /// ACL every filter is allowed.
    pub fn may_subscribe(&self, p: &Principal, client_id: &str, filter: &str) -> bool {
        self.acl.as_ref().is_none_or(|acl| {
            let client = acl::Client {
                client_id,
                username: p.user.as_deref(),
            };
            acl.may_read(client, filter)
        })
    }

    /// Reads and parses the password and ACL files.
    pub fn load(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        allow_anonymous: bool,
        identity: Identity,
    ) -> Result<Self, LoadError> {
        let at = |path: &Path, e: passwd::ParseError| LoadError {
            path: path.display().to_string(),
            message: e.to_string(),
        };
        let passwords = match password_file {
            Some(p) => Some(PasswordFile::parse(&read(p)?).map_err(|e| at(p, e))?),
            None => None,
        };
        let acl = match acl_file {
            Some(p) => Some(Acl::parse(&read(p)?).map_err(|e| at(p, e))?),
            None => None,
        };
        Ok(Self::new(passwords, acl, allow_anonymous, identity))
    }

    /// Whether every PUBLISH is allowed without looking (no ACL, no authentication): the
    /// session then skips the per-message check.
    pub fn publishes_unchecked(&self) -> bool {
        self.acl.is_none() && self.passwords.is_none() && self.allow_anonymous
    }

    /// Decides a CONNECT.
    pub fn connect(&self, c: Credentials<'_>) -> Result<Principal, Refused> {
        let mut user: Option<Arc<str>> = None;
        if let (Some(name), Some(passwords)) = (c.username, &self.passwords) {
            if !passwords.verify(name, c.password.unwrap_or_default()) {
                return Err(Refused::BadCredentials);
            }
            user = Some(Arc::from(name));
        }
        if user.is_none() {
            user = c.cert_cn.map(Arc::from);
        }
        let authenticated = user.is_some();
        if !authenticated && !self.allow_anonymous {
            return Err(Refused::Anonymous);
        }
        let device = match self.identity {
            Identity::ClientId => Arc::from(c.client_id),
            Identity::Username => user.clone().ok_or(Refused::NoIdentity)?,
            Identity::CertCn => c.cert_cn.map(Arc::from).ok_or(Refused::NoIdentity)?,
        };
        Ok(Principal {
            user,
            device,
            authenticated,
        })
    }

    /// Decides a PUBLISH to `topic` whose route names `topic_device` (its `{device_id}`
    /// level, if any). With an ACL, the ACL alone decides (it may grant a gateway user other
    /// devices' topics). Without one, an authenticated client may not write rows for another
    /// device.
    pub fn may_publish(
        &self,
        p: &Principal,
        client_id: &str,
        topic: &str,
        topic_device: Option<&str>,
    ) -> Result<(), Denied> {
        if let Some(acl) = &self.acl {
            let client = acl::Client {
                client_id,
                username: p.user.as_deref(),
            };
            return if acl.may_write(client, topic) {
                Ok(())
            } else {
                Err(Denied::Acl)
            };
        }
        match topic_device {
            Some(d) if p.authenticated && d != &*p.device => Err(Denied::DeviceClaim),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passwords() -> PasswordFile {
        // python3: base64(pbkdf2_hmac("sha512", b"pw", b"saltsaltsalt", 101))
        PasswordFile::parse("dev-1:$7$101$c2FsdHNhbHRzYWx0$LLKkEbEE6A0ZzBgDD1a8DxtZgwjUsWayIyP80udI8/oy/V5JrBisQZnPkSqa7DTcD2GFAT9Bqc/9Z8XDXv/2PA==").expect("parse")
    }

    fn creds<'a>(
        client_id: &'a str,
        username: Option<&'a str>,
        password: Option<&'a [u8]>,
        cert_cn: Option<&'a str>,
    ) -> Credentials<'a> {
        Credentials {
            client_id,
            username,
            password,
            cert_cn,
        }
    }

    #[test]
    fn passwords_and_anonymous() {
        let a = Authenticator::new(Some(passwords()), None, false, Identity::ClientId);
        let ok = a
            .connect(creds("c1", Some("dev-1"), Some(b"pw"), None))
            .expect("ok");
        assert!(ok.authenticated);
        assert_eq!(ok.user.as_deref(), Some("dev-1"));
        assert_eq!(&*ok.device, "c1");
        assert_eq!(
            a.connect(creds("c1", Some("dev-1"), Some(b"nope"), None))
                .err(),
            Some(Refused::BadCredentials)
        );
        assert_eq!(
            a.connect(creds("c1", Some("dev-1"), None, None)).err(),
            Some(Refused::BadCredentials)
        );
        assert_eq!(
            a.connect(creds("c1", None, None, None)).err(),
            Some(Refused::Anonymous)
        );
        let anon = Authenticator::new(Some(passwords()), None, true, Identity::ClientId);
        let p = anon
            .connect(creds("c1", None, None, None))
            .expect("anonymous");
        assert!(!p.authenticated);
        assert_eq!(
            anon.connect(creds("c1", Some("dev-1"), Some(b"x"), None))
                .err(),
            Some(Refused::BadCredentials),
            "a wrong password is refused even when anonymous access is on"
        );
    }

    #[test]
    fn identities() {
        let a = Authenticator::new(Some(passwords()), None, false, Identity::Username);
        let p = a
            .connect(creds("c1", Some("dev-1"), Some(b"pw"), None))
            .expect("ok");
        assert_eq!(&*p.device, "dev-1");
        let cn = Authenticator::new(None, None, false, Identity::CertCn);
        let p = cn
            .connect(creds("c1", None, None, Some("dev-42")))
            .expect("ok");
        assert_eq!(&*p.device, "dev-42");
        assert_eq!(p.user.as_deref(), Some("dev-42"));
        assert_eq!(
            cn.connect(creds("c1", None, None, None)).err(),
            Some(Refused::Anonymous)
        );
        let cn_anon = Authenticator::new(None, None, true, Identity::CertCn);
        assert_eq!(
            cn_anon.connect(creds("c1", None, None, None)).err(),
            Some(Refused::NoIdentity)
        );
        // Without a password file a user name proves nothing.
        let open = Authenticator::new(None, None, true, Identity::ClientId);
        let p = open
            .connect(creds("c1", Some("root"), Some(b"x"), None))
            .expect("ok");
        assert!(!p.authenticated);
        assert_eq!(p.user, None);
    }

    #[test]
    fn device_claims_without_an_acl() {
        let a = Authenticator::new(Some(passwords()), None, false, Identity::Username);
        let p = a
            .connect(creds("c1", Some("dev-1"), Some(b"pw"), None))
            .expect("ok");
        assert_eq!(a.may_publish(&p, "c1", "s/dev-1/t", Some("dev-1")), Ok(()));
        assert_eq!(a.may_publish(&p, "c1", "s/t", None), Ok(()));
        assert_eq!(
            a.may_publish(&p, "c1", "s/dev-2/t", Some("dev-2")),
            Err(Denied::DeviceClaim)
        );
        assert!(Authenticator::new(None, None, true, Identity::ClientId).publishes_unchecked());
        assert!(!a.publishes_unchecked());
    }

    #[test]
    fn the_acl_decides_when_there_is_one() {
        let acl =
            Acl::parse("pattern write sensors/%c/#\nuser gw\ntopic write sensors/#").expect("acl");
        let a = Authenticator::new(None, Some(acl), true, Identity::ClientId);
        let p = a.connect(creds("dev-1", None, None, None)).expect("ok");
        assert_eq!(
            a.may_publish(&p, "dev-1", "sensors/dev-1/t", Some("dev-1")),
            Ok(())
        );
        assert_eq!(
            a.may_publish(&p, "dev-1", "sensors/dev-2/t", Some("dev-2")),
            Err(Denied::Acl)
        );
        let gw = Principal {
            user: Some(Arc::from("gw")),
            device: Arc::from("gw"),
            authenticated: true,
        };
        assert_eq!(
            a.may_publish(&gw, "gw", "sensors/dev-2/t", Some("dev-2")),
            Ok(())
        );
    }

    #[test]
    fn read_rules_decide_subscriptions_taking_wildcards_literally() {
        let acl = Acl::parse(
            "pattern read cmd/%c/#\nuser gw\ntopic read sensors/#\ntopic deny sensors/secret\ntopic write up/#",
        )
        .expect("acl");
        let a = Authenticator::new(None, Some(acl), true, Identity::ClientId);
        let dev = a.connect(creds("dev-1", None, None, None)).expect("ok");
        assert!(a.may_subscribe(&dev, "dev-1", "cmd/dev-1/#"));
        assert!(a.may_subscribe(&dev, "dev-1", "cmd/dev-1/+/x"));
        assert!(
            !a.may_subscribe(&dev, "dev-1", "cmd/+/#"),
            "would see other devices"
        );
        assert!(!a.may_subscribe(&dev, "dev-1", "#"));
        let gw = Principal {
            user: Some(Arc::from("gw")),
            device: Arc::from("gw"),
            authenticated: true,
        };
        assert!(a.may_subscribe(&gw, "gw", "sensors/+/t"));
        assert!(
            !a.may_subscribe(&gw, "gw", "up/#"),
            "write does not grant read"
        );
        let acl = a.acl().expect("an ACL");
        let client = acl::Client {
            client_id: "gw",
            username: Some("gw"),
        };
        assert!(acl.may_read(client, "sensors/a"));
        assert!(
            !acl.may_read(client, "sensors/secret"),
            "deny wins inside a granted filter"
        );
    }
}
