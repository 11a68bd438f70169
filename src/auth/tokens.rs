//! gRPC bearer tokens: a file of `name:sha256:<hex>` lines (`#` comments), each the SHA-256 of
//! one device's or service's token, so the file holds no usable secret. Tokens are long random
//! strings (e.g. `openssl rand -hex 32`): one SHA-256 is the right hash for them (a password
//! hash's slowness protects guessable secrets, and would cost every request). A presented
//! token is hashed and looked up by its digest; comparing digests leaks nothing useful.

use std::collections::HashMap;
use std::sync::Arc;

use super::passwd::ParseError;

/// A parsed tokens file.
#[derive(Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Arc<str>>,
}

fn hex32(s: &str) -> Option<[u8; 32]> {
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

fn digest(token: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl Tokens {
    /// Parses the text of a tokens file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut by_digest = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| ParseError {
                line: i + 1,
                message,
            };
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(kind), Some(hex)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(err("expected `name:sha256:<64 hex digits>`".into()));
            };
            if name.is_empty() {
                return Err(err("empty name".into()));
            }
            if kind != "sha256" {
                return Err(err(format!(
                    "`{name}`: unknown hash `{kind}` (expected sha256)"
                )));
            }
            let d = hex32(hex)
                .ok_or_else(|| err(format!("`{name}`: the SHA-256 must be 64 hex digits")))?;
            if by_digest.insert(d, Arc::from(name)).is_some() {
                return Err(err(format!("`{name}`: the same token is listed twice")));
            }
        }
        Ok(Self { by_digest })
    }

    /// The name whose token this is.
    pub fn identify(&self, token: &[u8]) -> Option<&Arc<str>> {
        self.by_digest.get(&digest(token))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_by_digest() {
        let hex: String = digest(b"tok-1")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let text = format!("# tokens\ndev-1:sha256:{hex}\n");
        let t = Tokens::parse(&text).expect("parse");
        assert_eq!(t.len(), 1);
        assert_eq!(t.identify(b"tok-1").map(|n| &**n), Some("dev-1"));
        assert!(t.identify(b"tok-2").is_none());
        assert!(t.identify(b"").is_none());
    }

    #[test]
    fn known_vector() {
        // printf %s 'secret' | sha256sum
        let t = Tokens::parse(
            "svc:sha256:2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b",
        )
        .expect("parse");
        assert_eq!(t.identify(b"secret").map(|n| &**n), Some("svc"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (text, needle) in [
            ("dev-1", "name:sha256"),
            (":sha256:00", "empty name"),
            ("d:md5:00", "unknown hash"),
            ("d:sha256:xyz", "64 hex"),
            (&format!("d:sha256:{}", "g".repeat(64)), "64 hex"),
        ] {
            let e = Tokens::parse(&format!("\n{text}"))
                .expect_err(text)
                .to_string();
            assert!(e.starts_with("line 2"), "{e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
        let twice = format!("a:sha256:{0}\nb:sha256:{0}", "0".repeat(64));
        assert!(Tokens::parse(&twice).is_err());
    }
}
