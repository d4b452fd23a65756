//! FNV-1a, the stable digest image keys hold: unlike `std`'s hashers it is the same in every
//! build and version, so a key written today still matches tomorrow.

/// The FNV-1a digest of `bytes`.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
