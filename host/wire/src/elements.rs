//! Field elements on the wire: 16 little-endian bytes each, as raw bytes in binary bodies and
//! as lowercase hex in JSON. Decoding refuses non-canonical values (≥ p) and ragged lengths.

use quorumvm_core::field::Fp;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementsError {
    #[error("{0} bytes is not a whole number of 16-byte field elements")]
    Ragged(usize),
    #[error("element {0} is not a canonical field element")]
    NonCanonical(usize),
    #[error("not hex: {0}")]
    NotHex(String),
}

pub fn to_bytes(values: &[Fp]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 16);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn from_bytes(bytes: &[u8]) -> Result<Vec<Fp>, ElementsError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(ElementsError::Ragged(bytes.len()));
    }
    bytes
        .chunks_exact(16)
        .enumerate()
        .map(|(i, c)| {
            Fp::from_le_bytes(c.try_into().expect("chunks of 16"))
                .ok_or(ElementsError::NonCanonical(i))
        })
        .collect()
}

pub fn to_hex(values: &[Fp]) -> String {
    hex::encode(to_bytes(values))
}

pub fn from_hex(text: &str) -> Result<Vec<Fp>, ElementsError> {
    let bytes = hex::decode(text).map_err(|e| ElementsError::NotHex(e.to_string()))?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let values = vec![Fp::ZERO, Fp::from_i128(-7), Fp::from_u128(12345)];
        assert_eq!(from_hex(&to_hex(&values)).unwrap(), values);
        assert_eq!(from_bytes(&[0; 17]), Err(ElementsError::Ragged(17)));
        // p itself is not canonical.
        let p = quorumvm_core::field::P.to_le_bytes();
        assert_eq!(from_bytes(&p), Err(ElementsError::NonCanonical(0)));
        assert!(matches!(from_hex("zz"), Err(ElementsError::NotHex(_))));
    }
}
