//! Field elements that are secret shares (kits, preprocessing messages), to and from bytes
//! without leaving copies behind: every buffer is allocated at its final size (a growing `Vec`
//! would leave its earlier, freed buffers unwiped) and wiped when dropped.

use quorumvm_core::field::Fp;
use quorumvm_wire::elements::{self, ElementsError};
use zeroize::Zeroizing;

/// The wire layout ([`quorumvm_wire::elements`]): 16 little-endian bytes each.
pub(crate) fn to_bytes(values: &[Fp]) -> Zeroizing<Vec<u8>> {
    // `elements::to_bytes` allocates exactly once.
    Zeroizing::new(elements::to_bytes(values))
}

/// The inverse of [`to_bytes`]; refuses ragged lengths and non-canonical elements.
pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Zeroizing<Vec<Fp>>, ElementsError> {
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

/// Hex, as JSON bodies carry elements (input shares), to elements.
pub(crate) fn from_hex(text: &str) -> Result<Zeroizing<Vec<Fp>>, ElementsError> {
    let mut bytes = Zeroizing::new(vec![0u8; text.len() / 2]);
    hex::decode_to_slice(text, &mut bytes[..]).map_err(|e| ElementsError::NotHex(e.to_string()))?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_elements_round_trip_as_the_wire_encodes_them() {
        let values = vec![Fp::from_i128(-3), Fp::from_u128(7), Fp::ZERO];
        let bytes = to_bytes(&values);
        assert_eq!(*bytes, elements::to_bytes(&values));
        assert_eq!(*from_bytes(&bytes).unwrap(), values);
        assert_eq!(*from_hex(&elements::to_hex(&values)).unwrap(), values);
        assert!(matches!(from_hex("abc"), Err(ElementsError::NotHex(_))));
        assert_eq!(
            from_bytes(&bytes[..17]).unwrap_err(),
            ElementsError::Ragged(17)
        );
        let mut bad = bytes.to_vec();
        bad[16..32].copy_from_slice(&quorumvm_core::field::P.to_le_bytes());
        assert_eq!(
            from_bytes(&bad).unwrap_err(),
            ElementsError::NonCanonical(1)
        );
    }
}
