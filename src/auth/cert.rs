//! The subject common name (CN) of a DER X.509 certificate: the few DER steps from the
//! certificate to its subject, enough for mTLS identity. rustls has already verified the chain;
//! this only reads a name out of it, and any surprise in the structure gives `None`.

/// One DER element: tag and contents; `rest` is what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1F == 0x1F {
        return None; // multi-byte tags do not occur on the path we walk
    }
    let (&first, mut input) = input.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || input.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &b in &input[..n] {
            len = (len << 8) | usize::from(b);
        }
        input = &input[n..];
        len
    };
    if input.len() < len {
        return None;
    }
    Some((tag, &input[..len], &input[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The first CN of the certificate's subject, if it is a UTF-8, printable or IA5 string.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    let (SEQUENCE, cert, _) = element(der)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(cert)? else {
        return None;
    };
    // [0] EXPLICIT version, optional.
    if let Some((0xA0, _, rest)) = element(tbs) {
        tbs = rest;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, mut name, _) = element(tbs)? else {
        return None;
    };
    while !name.is_empty() {
        let (tag, mut rdn, rest) = element(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !rdn.is_empty() {
            let (tag, attr, rest) = element(rdn)?;
            rdn = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (OID, oid, value) = element(attr)? else {
                return None;
            };
            if oid != COMMON_NAME {
                continue;
            }
            let (tag, text, _) = element(value)?;
            // UTF8String, PrintableString, IA5String.
            return match tag {
                0x0C | 0x13 | 0x16 => std::str::from_utf8(text).ok().map(str::to_string),
                _ => None,
            };
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate made with
    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=fleet/CN=dev-42" -days 1`.
    const PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUcau0Pg9aPOeN28XvgJTrkGZSFIkwCgYIKoZIzj0EAwIw
ITEOMAwGA1UECgwFZmxlZXQxDzANBgNVBAMMBmRldi00MjAeFw0yNjExMjcxMTM2
NTRaFw0yNjExMjgxMTM2NTRaMCExDjAMBgNVBAoMBWZsZWV0MQ8wDQYDVQQDDAZk
ZXYtNDIwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAQoBvr7QVg7U5GARjNbHiDs
YKLDxjvOxb/UCt0UFVbVWzHl0LB60nbP1pHm1PZkn/j2KGkpA2QDaQjSqqEvNn+1
o1MwUTAdBgNVHQ4EFgQU923PP04kPazhRWMMgkGsCde23r4wHwYDVR0jBBgwFoAU
923PP04kPazhRWMMgkGsCde23r4wDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiBhkHve6A8oHen+IAy0yut/hTWLJOCV36EQF4ewn7R4SgIhAI/aZaiv
FV00thu8pTuHp7c7LikAQtlmv2RRyqR4WyCc
-----END CERTIFICATE-----";

    fn der() -> Vec<u8> {
        use base64::Engine;
        let body: String = PEM.lines().filter(|l| !l.starts_with("-----")).collect();
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap_or_default()
    }

    #[test]
    fn reads_the_subject_cn() {
        let der = der();
        assert!(!der.is_empty());
        assert_eq!(subject_cn(&der).as_deref(), Some("dev-42"));
    }

    #[test]
    fn never_panics_on_garbage() {
        let der = der();
        for cut in 0..der.len() {
            let _ = subject_cn(&der[..cut]);
        }
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xFF;
            let _ = subject_cn(&flipped);
            flipped[i] ^= 0xFF;
        }
        assert_eq!(subject_cn(&[]), None);
        assert_eq!(subject_cn(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
    }
}
