//! Field elements on the wire: 16 little-endian bytes each, as raw bytes in binary bodies and
//! as lowercase hex in JSON. Decoding refuses non-canonical values (≥ p) and ragged lengths.
//!
//! Most elements that travel are secret shares (kits, input and output shares, preprocessing
//! messages), so decoding leaves no copies behind: every buffer is allocated at its final size
//! (a growing `Vec` would leave its earlier, freed buffers unwiped) and is wiped when dropped.

use quorumvm_core::field::Fp;
use zeroize::Zeroizing;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElementsError {
    #[error("{0} bytes is not a whole number of 16-byte field elements")]
    Ragged(usize),
    #[error("element {0} is not a canonical field element")]
    NonCanonical(usize),
    #[error("not hex: {0}")]
    NotHex(String),
}

/// Allocates exactly once, so a caller may wrap the result in [`Zeroizing`] to wipe it.
pub fn to_bytes(values: &[Fp]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 16);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn from_bytes(bytes: &[u8]) -> Result<Zeroizing<Vec<Fp>>, ElementsError> {
    if !bytes.len().is_multiple_of(16) {
        return Err(ElementsError::Ragged(bytes.len()));
    }
    let mut values = Zeroizing::new(Vec::with_capacity(bytes.len() / 16));
    for (i, chunk) in bytes.chunks_exact(16).enumerate() {
        let mut word = Zeroizing::new([0u8; 16]);
        word.copy_from_slice(chunk);
        values.push(Fp::from_le_bytes(*word).ok_or(ElementsError::NonCanonical(i))?);
    }
    Ok(values)
}

pub fn to_hex(values: &[Fp]) -> String {
    hex::encode(to_bytes(values))
}

pub fn from_hex(text: &str) -> Result<Zeroizing<Vec<Fp>>, ElementsError> {
    let mut bytes = Zeroizing::new(vec![0u8; text.len() / 2]);
    hex::decode_to_slice(text, &mut bytes[..]).map_err(|e| ElementsError::NotHex(e.to_string()))?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let values = vec![Fp::ZERO, Fp::from_i128(-7), Fp::from_u128(12345)];
        assert_eq!(*from_hex(&to_hex(&values)).unwrap(), values);
        assert_eq!(*from_bytes(&to_bytes(&values)).unwrap(), values);
        assert_eq!(from_bytes(&[0; 17]).unwrap_err(), ElementsError::Ragged(17));
        // p itself is not canonical, wherever it stands.
        let p = quorumvm_core::field::P.to_le_bytes();
        assert_eq!(from_bytes(&p).unwrap_err(), ElementsError::NonCanonical(0));
        let mut bad = to_bytes(&values);
        bad[16..32].copy_from_slice(&p);
        assert_eq!(
            from_bytes(&bad).unwrap_err(),
            ElementsError::NonCanonical(1)
        );
        assert!(matches!(from_hex("zz"), Err(ElementsError::NotHex(_))));
        assert!(matches!(from_hex("abc"), Err(ElementsError::NotHex(_))));
    }
}
