//! A SHA-256 state that survives between processes: sha2's serialized
//! internal state (chaining value, block count and the partial block),
//! written as hex. Any backend can keep it next to an upload so that the
//! replica committing the upload need not re-read its bytes.

use sha2::Sha256;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};

/// Hex text of `hasher`'s internal state.
pub(crate) fn save(hasher: &Sha256) -> String {
    hex::encode(hasher.serialize().as_slice())
}

/// The hasher saved by [`save`], or `None` if `text` is not such a state
/// (corrupt, or written by an incompatible sha2 version).
pub(crate) fn restore(text: &str) -> Option<Sha256> {
    let bytes = hex::decode(text).ok()?;
    let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
    Sha256::deserialize(&state).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use capstan_oci::{Algorithm, Digest, Hasher};
    use sha2::Digest as _;

    #[test]
    fn a_restored_state_continues_the_hash() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        // Split inside a block, so the partial block must survive too.
        for split in [0, 1, 63, 64, 65, 999, 1000] {
            let mut h = Sha256::new();
            h.update(&data[..split]);
            let text = save(&h);
            let mut resumed = restore(&text).expect("state restores");
            resumed.update(&data[split..]);
            assert_eq!(
                Hasher::Sha256(resumed).finish(),
                Digest::of(Algorithm::Sha256, &data),
                "split at {split}"
            );
        }
    }

    #[test]
    fn garbage_is_not_a_state() {
        assert!(restore("").is_none());
        assert!(restore("zz").is_none());
        assert!(restore("00ff").is_none());
        let mut long = save(&Sha256::new());
        long.push_str("00");
        assert!(restore(&long).is_none());
    }
}
