//! Proof of holding the folder key, before any index or chunk moves.
//!
//! The allowlist only says who may connect; the folder key says who is a
//! member. Each side sends a fresh random nonce, then a MAC (keyed BLAKE3
//! under a key derived from the folder key) over both endpoint ids and both
//! nonces, in the prover's order. A proof is bound to this connection's two
//! nonces (no replay), to its direction (the ids are ordered prover first, so
//! reflecting a proof back fails) and to this pair of nodes (no relaying to a
//! third). A side that sees a wrong proof sends nothing else.

use iroh::EndpointId;

const CONTEXT: &[u8] = b"sovryn/sync/3 membership proof";

/// A connection's fresh nonce.
pub type Nonce = [u8; 32];

/// A new random nonce.
pub fn nonce() -> Nonce {
    rand::random()
}

/// The proof that `prover` holds the membership key, for `verifier`.
pub fn prove(
    key: &[u8; 32],
    prover: &EndpointId,
    verifier: &EndpointId,
    prover_nonce: &Nonce,
    verifier_nonce: &Nonce,
) -> blake3::Hash {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(CONTEXT);
    h.update(prover.as_bytes());
    h.update(verifier.as_bytes());
    h.update(prover_nonce);
    h.update(verifier_nonce);
    h.finalize()
}

/// Checks a proof received from `prover` (hex), in constant time.
pub fn verify(
    key: &[u8; 32],
    prover: &EndpointId,
    verifier: &EndpointId,
    prover_nonce: &Nonce,
    verifier_nonce: &Nonce,
    mac_hex: &str,
) -> bool {
    let Ok(got) = blake3::Hash::from_hex(mac_hex) else {
        return false;
    };
    // `blake3::Hash`'s equality is constant-time.
    prove(key, prover, verifier, prover_nonce, verifier_nonce) == got
}

/// Parses a hex nonce from the peer.
pub fn parse_nonce(hex_text: &str) -> Option<Nonce> {
    let bytes = hex::decode(hex_text).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use iroh::SecretKey;

    fn id() -> EndpointId {
        SecretKey::generate().public()
    }

    #[test]
    fn a_proof_checks_only_for_its_key_direction_and_nonces() {
        let (a, b, c) = (id(), id(), id());
        let key = [7u8; 32];
        let (na, nb) = (nonce(), nonce());
        let p = prove(&key, &a, &b, &na, &nb).to_hex().to_string();
        assert!(verify(&key, &a, &b, &na, &nb, &p));
        // Another key, a reflected proof, a relayed one, a replayed one.
        assert!(!verify(&[8u8; 32], &a, &b, &na, &nb, &p));
        assert!(!verify(&key, &b, &a, &nb, &na, &p));
        assert!(!verify(&key, &a, &c, &na, &nb, &p));
        assert!(!verify(&key, &a, &b, &na, &nonce(), &p));
        assert!(!verify(&key, &a, &b, &na, &nb, "zz"));
        assert!(!verify(&key, &a, &b, &na, &nb, ""));
    }

    #[test]
    fn nonces_parse_only_as_32_bytes() {
        let n = nonce();
        assert_eq!(parse_nonce(&hex::encode(n)), Some(n));
        assert_eq!(parse_nonce("00"), None);
        assert_eq!(parse_nonce("not hex"), None);
    }
}
