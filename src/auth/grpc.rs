//! Who may write gRPC points (sans-IO): a bearer token from the tokens file, else the verified
//! client certificate's CN, names the caller; anonymous callers only when allowed. A named
//! caller writes points of its own `device_id` only, unless it is listed in
//! `grpc.auth.services` (a gateway or backend writing for many devices).

use std::collections::HashSet;
use std::sync::Arc;

use super::tokens::Tokens;

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrpcRefused {
    /// UNAUTHENTICATED: an unknown token, or no credentials while anonymous access is off.
    Unauthenticated(&'static str),
}

/// The caller of one request or stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No credentials (allowed): may write any device.
    Anonymous,
    /// A named service: may write any device.
    Service(Arc<str>),
    /// A named device: may write its own `device_id` only.
    Device(Arc<str>),
}

impl Caller {
    /// Whether this caller may write points of `device_id`.
    pub fn may_write(&self, device_id: &str) -> bool {
        match self {
            Self::Anonymous | Self::Service(_) => true,
            Self::Device(name) => **name == *device_id,
        }
    }

    /// The name, for logs and the WAL's client id.
    pub fn name(&self) -> Option<&Arc<str>> {
        match self {
            Self::Anonymous => None,
            Self::Service(n) | Self::Device(n) => Some(n),
        }
    }
}

/// The gRPC access policy.
#[derive(Debug, Default)]
pub struct GrpcPolicy {
    tokens: Option<Tokens>,
    services: HashSet<String>,
    allow_anonymous: bool,
}

impl GrpcPolicy {
    /// A policy from its parts.
    pub fn new(tokens: Option<Tokens>, services: HashSet<String>, allow_anonymous: bool) -> Self {
        Self {
            tokens,
            services,
            allow_anonymous,
        }
    }

    /// Names the caller from the `authorization` header value and the certificate CN.
    pub fn identify(
        &self,
        authorization: Option<&[u8]>,
        cert_cn: Option<&str>,
    ) -> Result<Caller, GrpcRefused> {
        let named = |name: &str| {
            if self.services.contains(name) {
                Caller::Service(Arc::from(name))
            } else {
                Caller::Device(Arc::from(name))
            }
        };
        if let (Some(tokens), Some(header)) = (&self.tokens, authorization) {
            let token = header
                .strip_prefix(b"Bearer ")
                .or_else(|| header.strip_prefix(b"bearer "))
                .ok_or(GrpcRefused::Unauthenticated(
                    "the authorization header is not `Bearer <token>`",
                ))?;
            return match tokens.identify(token.trim_ascii()) {
                Some(name) => Ok(named(name)),
                None => Err(GrpcRefused::Unauthenticated("unknown token")),
            };
        }
        if let Some(cn) = cert_cn {
            return Ok(named(cn));
        }
        if self.allow_anonymous {
            Ok(Caller::Anonymous)
        } else {
            Err(GrpcRefused::Unauthenticated(
                "no credentials: send `authorization: Bearer <token>`",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_anonymous: bool) -> GrpcPolicy {
        // printf %s secret | sha256sum ; printf %s svc-secret | sha256sum
        let tokens = Tokens::parse(
            "dev-1:sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b\n\
             svc:sha256:0000000000000000000000000000000000000000000000000000000000000000\n",
        )
        .expect("tokens");
        let services = HashSet::from(["svc".to_string(), "gw-cert".to_string()]);
        GrpcPolicy::new(Some(tokens), services, allow_anonymous)
    }

    #[test]
    fn tokens_certificates_and_anonymous() {
        let p = policy(false);
        let dev = p.identify(Some(b"Bearer secret"), None).expect("token");
        assert_eq!(dev, Caller::Device(Arc::from("dev-1")));
        assert!(dev.may_write("dev-1"));
        assert!(!dev.may_write("dev-2"));
        assert!(p.identify(Some(b"Bearer nope"), None).is_err());
        assert!(p.identify(Some(b"Basic secret"), None).is_err());
        assert!(p.identify(None, None).is_err());
        let gw = p.identify(None, Some("gw-cert")).expect("cert");
        assert!(gw.may_write("anything"));
        let open = policy(true);
        assert_eq!(open.identify(None, None), Ok(Caller::Anonymous));
        assert!(
            open.identify(Some(b"Bearer nope"), None).is_err(),
            "a wrong token is refused even when anonymous access is on"
        );
        assert_eq!(
            GrpcPolicy::new(None, HashSet::new(), true).identify(None, None),
            Ok(Caller::Anonymous)
        );
    }
}
