//! Mosquitto password files, as `mosquitto_passwd` writes them: one `user:hash` per line,
//! `#` comments. Hashes: `$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512, Mosquitto ≥ 2.0) and
//! `$6$salt$hash` (SHA-512 of password then salt, Mosquitto 1.x); salt and hash in standard
//! base64. Verification runs in constant time (ring's PBKDF2 verify, `subtle` for SHA-512).

use std::collections::HashMap;
use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use subtle::ConstantTimeEq;

/// More PBKDF2 iterations than this are refused when the file is read: each CONNECT pays for
/// them on an async worker (Mosquitto writes 101 by default; 10,000 take ~10 ms).
pub const MAX_ITERATIONS: u32 = 100_000;

#[derive(Debug)]
enum Hash {
    Pbkdf2Sha512 {
        iterations: NonZeroU32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

/// A parsed password file.
#[derive(Debug, Default)]
pub struct PasswordFile {
    users: HashMap<String, Hash>,
}

/// A line that cannot be used; the message names the line.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong (never the hash itself).
    pub message: String,
}

impl PasswordFile {
    /// Parses the text of a password file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut users = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| ParseError {
                line: i + 1,
                message,
            };
            let Some((user, hash)) = line.rsplit_once(':') else {
                return Err(err("expected `user:hash`".into()));
            };
            if user.is_empty() {
                return Err(err("empty user name".into()));
            }
            let hash = parse_hash(hash).map_err(|m| err(format!("user `{user}`: {m}")))?;
            users.insert(user.to_string(), hash);
        }
        Ok(Self { users })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        match self.users.get(user) {
            Some(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            }) => ring::pbkdf2::verify(
                ring::pbkdf2::PBKDF2_HMAC_SHA512,
                *iterations,
                salt,
                password,
                hash,
            )
            .is_ok(),
            Some(Hash::Sha512 { salt, hash }) => {
                let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
                ctx.update(password);
                ctx.update(salt);
                let digest = ctx.finish();
                digest.as_ref().ct_eq(hash).into()
            }
            None => false,
        }
    }
}

fn b64(what: &str, s: &str) -> Result<Vec<u8>, String> {
    STANDARD
        .decode(s)
        .map_err(|_| format!("{what} is not base64"))
}

fn parse_hash(s: &str) -> Result<Hash, String> {
    let parts: Vec<&str> = s.split('$').collect();
    match parts.as_slice() {
        ["", "7", iterations, salt, hash] => {
            let iterations: u32 = iterations
                .parse()
                .map_err(|_| "`$7$` iterations is not a number".to_string())?;
            let iterations = NonZeroU32::new(iterations)
                .filter(|n| n.get() <= MAX_ITERATIONS)
                .ok_or_else(|| format!("`$7$` iterations must be 1 to {MAX_ITERATIONS}"))?;
            let salt = b64("salt", salt)?;
            let hash = b64("hash", hash)?;
            if hash.len() != 64 {
                return Err("a `$7$` hash must be 64 bytes".into());
            }
            Ok(Hash::Pbkdf2Sha512 {
                iterations,
                salt,
                hash,
            })
        }
        ["", "6", salt, hash] => {
            let salt = b64("salt", salt)?;
            let hash = b64("hash", hash)?;
            if hash.len() != 64 {
                return Err("a `$6$` hash must be 64 bytes".into());
            }
            Ok(Hash::Sha512 { salt, hash })
        }
        _ => Err("unknown hash (expected `$7$…` or `$6$…` as mosquitto_passwd writes; a plain-text password file must be hashed with `mosquitto_passwd -U`)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with Python's hashlib (what Mosquitto computes):
    //   salt = b"0123456789ab"
    //   pbkdf2_hmac("sha512", b"s3cret", salt, 101)   and   sha512(b"s3cret" + salt)
    const FILE: &str = "# devices\n\
        dev-1:$7$101$MDEyMzQ1Njc4OWFi$PBKDF2\n\
        legacy:$6$MDEyMzQ1Njc4OWFi$SHA\n";

    fn file() -> String {
        let salt = b"0123456789ab";
        let mut pb = [0u8; 64];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            NonZeroU32::new(101).unwrap_or(NonZeroU32::MIN),
            salt,
            b"s3cret",
            &mut pb,
        );
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA512);
        ctx.update(b"s3cret");
        ctx.update(salt);
        FILE.replace("PBKDF2", &STANDARD.encode(pb))
            .replace("SHA", &STANDARD.encode(ctx.finish()))
    }

    #[test]
    fn verifies_both_hash_kinds() {
        let f = PasswordFile::parse(&file()).expect("parse");
        assert_eq!(f.len(), 2);
        assert!(f.verify("dev-1", b"s3cret"));
        assert!(!f.verify("dev-1", b"s3cret "));
        assert!(!f.verify("dev-1", b""));
        assert!(f.verify("legacy", b"s3cret"));
        assert!(!f.verify("legacy", b"S3cret"));
        assert!(!f.verify("nobody", b"s3cret"));
    }

    #[test]
    fn known_vector_from_python() {
        // python3 -c 'import hashlib,base64; print(base64.b64encode(hashlib.pbkdf2_hmac(
        //   "sha512", b"pw", b"saltsaltsalt", 101)).decode())'
        let line = "u:$7$101$c2FsdHNhbHRzYWx0$LLKkEbEE6A0ZzBgDD1a8DxtZgwjUsWayIyP80udI8/oy/V5JrBisQZnPkSqa7DTcD2GFAT9Bqc/9Z8XDXv/2PA==";
        let f = PasswordFile::parse(line).expect("parse");
        assert!(f.verify("u", b"pw"));
        assert!(!f.verify("u", b"pW"));
    }

    #[test]
    fn refuses_what_it_cannot_verify() {
        for (text, needle) in [
            ("dev", "user:hash"),
            ("dev:plain", "mosquitto_passwd -U"),
            (":$6$YQ==$YQ==", "empty user"),
            ("d:$6$YQ==$YQ==", "64 bytes"),
            ("d:$7$x$YQ==$YQ==", "not a number"),
            ("d:$7$0$YQ==$YQ==", "iterations"),
            ("d:$6$%%%$YQ==", "base64"),
        ] {
            let e = PasswordFile::parse(text).expect_err(text).to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.starts_with("line 1"), "{e}");
        }
    }
}
