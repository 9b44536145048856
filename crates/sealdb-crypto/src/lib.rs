//! The one crypto door of sealdb.
//!
//! Every byte sealdb encrypts or authenticates goes through this crate; no other crate of the
//! workspace depends on a cipher library. It offers:
//!
//! - [`SecretKey`]: 32 bytes of key material. Zeroized on drop, `Debug` prints `REDACTED`,
//!   no `Clone`, no way to borrow the bytes from outside this crate except by wrapping.
//! - [`AeadKey`]: an AES-256-GCM key ready for use, built from a [`SecretKey`].
//!   [`AeadKey::seal`] produces a *sealed unit* `nonce (12) ‖ ciphertext ‖ tag (16)` with a
//!   fresh random 96-bit nonce from the operating system's CSPRNG; [`AeadKey::open_in_place`]
//!   authenticates and decrypts one. The caller supplies the associated data (AAD) that binds
//!   the unit to its place.
//! - Key wrapping ([`AeadKey::wrap_key`], [`AeadKey::unwrap_key`]) and key-check values
//!   ([`AeadKey::check_value`], [`AeadKey::verify_check_value`]).
//! - [`ct_eq`], a constant-time comparison for tags and check values.
//! - Digests (SHA-256/384/512), ECDSA P-384 and Ed25519 verification, Ed25519 signing
//!   ([`SigningKey`]).
//! - [`tls`]: TLS 1.3 through `rustls` on `ring` for attested connections (a self-signed
//!   identity made in the vault, and a client that leaves trust to attestation).
//!
//! What it is not: a general crypto toolkit. Nonces are never derived from counters or file
//! positions (a crash could repeat them); callers must bound the number of units sealed under
//! one key (at most 2^32, see [`MAX_UNITS_PER_KEY`]).
//!
//! ```
//! use sealdb_crypto::{AeadKey, SecretKey};
//! let key = AeadKey::new(&SecretKey::generate().unwrap());
//! let mut unit = Vec::new();
//! key.seal(b"file=7,block=0", b"hello", &mut unit).unwrap();
//! let plain = key.open_in_place(b"file=7,block=0", &mut unit).unwrap();
//! assert_eq!(plain, b"hello");
//! ```
#![forbid(unsafe_code)]

pub mod tls;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length in bytes of every key handled here (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the random nonce that starts every sealed unit.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM tag that ends every sealed unit.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed unit adds to its plaintext.
pub const SEAL_OVERHEAD: usize = NONCE_LEN + TAG_LEN;
/// The most units the engine may seal under one key with random 96-bit nonces
/// (NIST SP 800-38D, section 8.3).
pub const MAX_UNITS_PER_KEY: u64 = 1 << 32;

/// What went wrong in a crypto operation. Messages never contain key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Rng,
    /// Key material of the wrong length was given.
    #[error("key material must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// A sealed unit is shorter than nonce plus tag.
    #[error("sealed unit of {0} bytes is shorter than the {SEAL_OVERHEAD}-byte minimum")]
    Truncated(usize),
    /// Authentication failed: wrong key, wrong place (AAD), or modified bytes.
    #[error("authentication failed (wrong key, moved or modified data)")]
    Authentication,
}

/// 32 bytes of secret key material: zeroized on drop, redacted in `Debug`, never cloned.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// A new key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut k = SecretKey([0u8; KEY_LEN]);
        fill_random(&mut k.0)?;
        Ok(k)
    }

    /// Takes key material from `bytes`. The caller should zeroize its own copy.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != KEY_LEN {
            return Err(CryptoError::KeyLength(bytes.len()));
        }
        let mut k = SecretKey([0u8; KEY_LEN]);
        k.0.copy_from_slice(bytes);
        Ok(k)
    }

    /// Constant-time equality of two keys.
    pub fn ct_eq(&self, other: &SecretKey) -> bool {
        ct_eq(&self.0, &other.0)
    }

    /// The key bytes, for writing a key file the owner asked for (`sealdb keygen`).
    /// This is the only way out of the type; it is named to be found in review.
    pub fn danger_export(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(REDACTED)")
    }
}

/// An AES-256-GCM key ready to seal and open units, built from a [`SecretKey`] (which it
/// does not keep).
///
/// Hazard: the expanded AES key schedule lives inside `ring` and is not zeroized by it.
pub struct AeadKey {
    key: LessSafeKey,
}

impl std::fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AeadKey(REDACTED)")
    }
}

const KCV_PLAINTEXT: &[u8; 32] = b"sealdb key-check value, v1\0\0\0\0\0\0";

impl AeadKey {
    /// Prepares `secret` for AES-256-GCM.
    pub fn new(secret: &SecretKey) -> Self {
        let unbound = UnboundKey::new(&aead::AES_256_GCM, &secret.0)
            .expect("AES-256-GCM accepts every 32-byte key");
        AeadKey {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Seals `plaintext` bound to `aad`, appending `nonce ‖ ciphertext ‖ tag` to `out`.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        self.seal_with_nonce(nonce, aad, plaintext, out);
        Ok(())
    }

    fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) {
        let start = out.len();
        out.reserve(plaintext.len() + SEAL_OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start + NONCE_LEN..],
            )
            .expect("plaintext length is far below the GCM limit");
        out.extend_from_slice(tag.as_ref());
    }

    /// Authenticates and decrypts a sealed unit in place; returns the plaintext, a sub-slice
    /// of `sealed`. On failure `sealed` holds no plaintext.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Truncated(sealed.len()));
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[..NONCE_LEN]);
        let body = &mut sealed[NONCE_LEN..];
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), body)
            .map_err(|_| CryptoError::Authentication)?;
        Ok(plain)
    }

    /// Wraps (seals) another key under this one, bound to `aad`.
    pub fn wrap_key(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(KEY_LEN + SEAL_OVERHEAD);
        self.seal(aad, &key.0, &mut out)?;
        Ok(out)
    }

    /// Unwraps a key produced by [`AeadKey::wrap_key`] with the same `aad`.
    pub fn unwrap_key(&self, aad: &[u8], wrapped: &[u8]) -> Result<SecretKey, CryptoError> {
        let mut buf = wrapped.to_vec();
        let result = match self.open_in_place(aad, &mut buf) {
            Ok(plain) => SecretKey::from_slice(plain),
            Err(e) => Err(e),
        };
        buf.zeroize();
        result
    }

    /// A key-check value: a sealed constant that proves, to the holder of this key only, that
    /// a later key is the same one. Reveals nothing about the key.
    pub fn check_value(&self, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(KCV_PLAINTEXT.len() + SEAL_OVERHEAD);
        self.seal(aad, KCV_PLAINTEXT, &mut out)?;
        Ok(out)
    }

    /// Checks a key-check value made by [`AeadKey::check_value`] with the same key and `aad`.
    pub fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> Result<(), CryptoError> {
        let mut buf = kcv.to_vec();
        let plain = self.open_in_place(aad, &mut buf)?;
        if ct_eq(plain, KCV_PLAINTEXT) {
            Ok(())
        } else {
            Err(CryptoError::Authentication)
        }
    }
}

/// The operations of a master key: key-check values, wrapping data keys, authenticating the
/// key registry. The same code runs in the engine (`host` key mode) and in the vault, so both
/// produce and accept exactly the same bytes.
pub struct MasterKey {
    aead: AeadKey,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(REDACTED)")
    }
}

impl MasterKey {
    /// Uses `key` as the master key.
    pub fn new(key: &SecretKey) -> Self {
        MasterKey {
            aead: AeadKey::new(key),
        }
    }

    /// A key-check value over `aad`.
    pub fn check_value(&self, aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.aead.check_value(aad)
    }

    /// Whether `kcv` was made by this master key over `aad`.
    pub fn verify_check_value(&self, aad: &[u8], kcv: &[u8]) -> bool {
        self.aead.verify_check_value(aad, kcv).is_ok()
    }

    /// A fresh data key and its wrapped form under `aad`.
    pub fn new_data_key(&self, aad: &[u8]) -> Result<(SecretKey, Vec<u8>), CryptoError> {
        let key = SecretKey::generate()?;
        let wrapped = self.aead.wrap_key(aad, &key)?;
        Ok((key, wrapped))
    }

    /// Wraps `key` under `aad`.
    pub fn wrap(&self, aad: &[u8], key: &SecretKey) -> Result<Vec<u8>, CryptoError> {
        self.aead.wrap_key(aad, key)
    }

    /// Unwraps a wrapped key; `None` if it does not authenticate under `aad`.
    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Option<SecretKey> {
        self.aead.unwrap_key(aad, wrapped).ok()
    }

    /// A tag over `data` (sealed unit of empty plaintext with `data` as associated data).
    pub fn authenticate(&self, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut tag = Vec::with_capacity(SEAL_OVERHEAD);
        self.aead.seal(data, &[], &mut tag)?;
        Ok(tag)
    }

    /// Whether `tag` authenticates `data`.
    pub fn verify_tag(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut t = tag.to_vec();
        self.aead.open_in_place(data, &mut t).is_ok()
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-384 of `data`.
pub fn sha384(data: &[u8]) -> [u8; 48] {
    let d = ring::digest::digest(&ring::digest::SHA384, data);
    let mut out = [0u8; 48];
    out.copy_from_slice(d.as_ref());
    out
}

/// SHA-512 of `data`.
pub fn sha512(data: &[u8]) -> [u8; 64] {
    let d = ring::digest::digest(&ring::digest::SHA512, data);
    let mut out = [0u8; 64];
    out.copy_from_slice(d.as_ref());
    out
}

/// How an ECDSA signature is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EcdsaEncoding {
    /// DER `SEQUENCE { r, s }` (X.509 certificates).
    Asn1,
    /// `r ‖ s`, each 48 bytes (COSE).
    Fixed,
}

/// Verifies an ECDSA P-384 / SHA-384 signature over `message` with an uncompressed SEC1
/// public key (as found in a certificate's SubjectPublicKeyInfo).
pub fn verify_ecdsa_p384_sha384(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
    encoding: EcdsaEncoding,
) -> Result<(), CryptoError> {
    use ring::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_ASN1, ECDSA_P384_SHA384_FIXED};
    let alg = match encoding {
        EcdsaEncoding::Asn1 => &ECDSA_P384_SHA384_ASN1,
        EcdsaEncoding::Fixed => &ECDSA_P384_SHA384_FIXED,
    };
    UnparsedPublicKey::new(alg, public_key)
        .verify(message, signature)
        .map_err(|_| CryptoError::Authentication)
}

/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// An Ed25519 signing key (the 32-byte seed of RFC 8032): zeroized on drop, redacted in
/// `Debug`, never cloned. Used for simulated TEE evidence and, later, verifier verdicts.
///
/// Only the seed is kept. Each signature expands it into a `ring` key pair for the duration
/// of the call; `ring` does not wipe that expanded key when it is dropped.
#[derive(ZeroizeOnDrop)]
pub struct SigningKey {
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(REDACTED)")
    }
}

impl SigningKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, CryptoError> {
        let mut seed = [0u8; 32];
        fill_random(&mut seed)?;
        Ok(SigningKey { seed })
    }

    /// A key from its 32-byte seed (for example one read from a key file).
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        let seed: [u8; 32] = seed
            .try_into()
            .map_err(|_| CryptoError::KeyLength(seed.len()))?;
        Ok(SigningKey { seed })
    }

    fn pair(&self) -> ring::signature::Ed25519KeyPair {
        // A 32-byte seed always gives a key pair; the length is fixed by the type.
        ring::signature::Ed25519KeyPair::from_seed_unchecked(&self.seed)
            .expect("Ed25519 accepts every 32-byte seed")
    }

    /// The public key.
    pub fn public_key(&self) -> [u8; ED25519_PUBLIC_LEN] {
        use ring::signature::KeyPair;
        let mut out = [0u8; ED25519_PUBLIC_LEN];
        out.copy_from_slice(self.pair().public_key().as_ref());
        out
    }

    /// Signs `message` (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        out.copy_from_slice(self.pair().sign(message).as_ref());
        out
    }
}

/// Verifies an Ed25519 signature over `message` with a 32-byte public key.
pub fn verify_ed25519(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), CryptoError> {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public_key)
        .verify(message, signature)
        .map_err(|_| CryptoError::Authentication)
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) -> Result<(), CryptoError> {
    SystemRandom::new().fill(buf).map_err(|_| CryptoError::Rng)
}

/// Constant-time equality (time depends only on the lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8032 section 7.1, test 2 (one-byte message).
    #[test]
    fn ed25519_known_answer() {
        let key = SigningKey::from_seed(&h(
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        ))
        .unwrap();
        assert_eq!(
            key.public_key().to_vec(),
            h("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c")
        );
        let sig = key.sign(&[0x72]);
        assert_eq!(
            sig.to_vec(),
            h("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00")
        );
        verify_ed25519(&key.public_key(), &[0x72], &sig).unwrap();
        assert_eq!(
            verify_ed25519(&key.public_key(), &[0x73], &sig),
            Err(CryptoError::Authentication)
        );
        assert_eq!(format!("{key:?}"), "SigningKey(REDACTED)");
        assert!(SigningKey::from_seed(&[0u8; 31]).is_err());
    }

    /// Known-answer tests from the GCM specification (McGrew & Viega), test cases 14 and 16.
    #[test]
    fn aes_256_gcm_known_answers() {
        let cases = [
            (
                "0000000000000000000000000000000000000000000000000000000000000000",
                "000000000000000000000000",
                "",
                "00000000000000000000000000000000",
                "cea7403d4d606b6e074ec5d3baf39d18",
                "d0d1c8a799996bf0265b98b5d48ab919",
            ),
            (
                "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
                "cafebabefacedbaddecaf888",
                "feedfacedeadbeeffeedfacedeadbeefabaddad2",
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
                "76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (k, iv, aad, pt, ct, tag) in cases {
            let key = AeadKey::new(&SecretKey::from_slice(&h(k)).unwrap());
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(&h(iv));
            let mut out = Vec::new();
            key.seal_with_nonce(nonce, &h(aad), &h(pt), &mut out);
            let expected = [h(iv), h(ct), h(tag)].concat();
            assert_eq!(hex::encode(&out), hex::encode(&expected));
            let plain = key.open_in_place(&h(aad), &mut out).unwrap();
            assert_eq!(plain, &h(pt)[..]);
        }
    }

    #[test]
    fn every_modification_or_move_is_refused() {
        let key = AeadKey::new(&SecretKey::generate().unwrap());
        let mut unit = Vec::new();
        key.seal(b"place-1", b"some plaintext", &mut unit).unwrap();
        for i in 0..unit.len() {
            let mut bad = unit.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                key.open_in_place(b"place-1", &mut bad),
                Err(CryptoError::Authentication)
            );
        }
        let mut moved = unit.clone();
        assert_eq!(
            key.open_in_place(b"place-2", &mut moved),
            Err(CryptoError::Authentication)
        );
        let other = AeadKey::new(&SecretKey::generate().unwrap());
        let mut copy = unit.clone();
        assert_eq!(
            other.open_in_place(b"place-1", &mut copy),
            Err(CryptoError::Authentication)
        );
        assert_eq!(
            key.open_in_place(b"place-1", &mut unit[..27]),
            Err(CryptoError::Truncated(27))
        );
    }

    #[test]
    fn nonces_are_fresh() {
        let key = AeadKey::new(&SecretKey::generate().unwrap());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        key.seal(b"", b"same", &mut a).unwrap();
        key.seal(b"", b"same", &mut b).unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn wrap_and_check_value_round_trip() {
        let master = AeadKey::new(&SecretKey::generate().unwrap());
        let data = SecretKey::generate().unwrap();
        let wrapped = master.wrap_key(b"id=1", &data).unwrap();
        assert!(master.unwrap_key(b"id=1", &wrapped).unwrap().ct_eq(&data));
        assert!(master.unwrap_key(b"id=2", &wrapped).is_err());
        let kcv = master.check_value(b"store").unwrap();
        master.verify_check_value(b"store", &kcv).unwrap();
        let wrong = AeadKey::new(&SecretKey::generate().unwrap());
        assert!(wrong.verify_check_value(b"store", &kcv).is_err());
    }

    #[test]
    fn digests_known_answers() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(sha384(b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7"
        );
        assert_eq!(
            hex::encode(sha512(b"abc")),
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
        );
    }

    #[test]
    fn debug_is_redacted_and_lengths_checked() {
        let k = SecretKey::from_slice(&[7u8; 32]).unwrap();
        assert_eq!(format!("{k:?}"), "SecretKey(REDACTED)");
        assert_eq!(
            SecretKey::from_slice(&[0u8; 31]).unwrap_err(),
            CryptoError::KeyLength(31)
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
