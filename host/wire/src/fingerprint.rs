//! A party's TLS key as the cluster's configs pin it: the SHA-256 of its certificate's
//! SubjectPublicKeyInfo (the "public key pin" of RFC 7469, which `curl --pinnedpubkey` also
//! takes, in base64). Pinning the key rather than the certificate lets a server renew its
//! certificate, or have one issued by its organization's CA for callers, without a config
//! change; no public CA is needed between the parties.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The pin of a DER-encoded SubjectPublicKeyInfo.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// As `curl --pinnedpubkey` takes it: `sha256//` and the base64 of the hash.
    pub fn to_curl(&self) -> String {
        use base64::Engine as _;
        format!(
            "sha256//{}",
            base64::engine::general_purpose::STANDARD.encode(self.0)
        )
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    /// 64 hex digits, optionally after `sha256:`.
    fn from_str(text: &str) -> Result<Fingerprint, String> {
        let hex_digits = text.trim().trim_start_matches("sha256:");
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(hex_digits, &mut bytes).map_err(|_| {
            format!("`{text}` is not a TLS key fingerprint (64 hex digits of a SHA-256)")
        })?;
        Ok(Fingerprint(bytes))
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Fingerprint, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_forms_round_trip_and_curl_pins_are_base64() {
        let f = Fingerprint::of_spki(b"spki");
        assert_eq!(f.to_hex().parse::<Fingerprint>().unwrap(), f);
        assert_eq!(format!("sha256:{f}").parse::<Fingerprint>().unwrap(), f);
        assert!("12".parse::<Fingerprint>().is_err());
        // SHA-256("abc"), base64 as `openssl dgst -binary | base64` prints it.
        let abc = Fingerprint::of_spki(b"abc");
        assert_eq!(
            abc.to_curl(),
            "sha256//ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
    }
}
