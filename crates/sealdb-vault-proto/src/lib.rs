//! The wire between the key owner and the vault: versioned, length-prefixed frames, and the
//! binding of attestation evidence to the TLS session it arrives on.
//!
//! A frame is `length (u32, big-endian) ‖ version (u8, 1) ‖ type (u8) ‖ payload`, where
//! `length` counts the bytes after it and is at most [`MAX_FRAME`]. Types:
//!
//! | type | message | direction | payload |
//! |---|---|---|---|
//! | 1 | [`Message::Challenge`] | owner → vault | nonce (32 bytes) |
//! | 2 | [`Message::Evidence`] | vault → owner | format code (u8: 1 sgx, 2 tdx, 3 snp, 4 nitro, 5 sim) ‖ evidence |
//! | 3 | [`Message::MasterKey`] | owner → vault | the master key (32 bytes) ‖ the owner's Ed25519 signature (64 bytes, see [`owner_signed_message`]) |
//! | 4 | [`Message::KeyCheck`] | vault → owner | key-check value (at most 256 bytes) |
//! | 5 | [`Message::StatusRequest`] | owner → vault | empty |
//! | 6 | [`Message::Status`] | vault → owner | state (u8: 0 unprovisioned, 1 provisioned) ‖ format code of its TEE |
//! | 7 | [`Message::Error`] | vault → owner or engine | UTF-8 text (at most 4096 bytes) |
//!
//! The engine's requests, on the vault's local socket (`a ‖ b` is `len(a) (u32 BE) ‖ a ‖ b`):
//!
//! | type | request | reply |
//! |---|---|---|
//! | 16 | [`Message::MakeCheckValue`]: aad | 32 [`Message::Bytes`]: the key-check value |
//! | 17 | [`Message::VerifyCheckValue`]: aad ‖ kcv | 33 [`Message::Verdict`]: 0 or 1 |
//! | 18 | [`Message::NewDataKey`]: aad | 34 [`Message::DataKey`]: key (32) ‖ wrapped |
//! | 19 | [`Message::UnwrapDataKey`]: aad ‖ wrapped | 35 [`Message::Unwrapped`]: empty, or the key (32) |
//! | 20 | [`Message::WrapDataKey`]: aad ‖ key (32) | 32 [`Message::Bytes`]: the wrapped key |
//! | 21 | [`Message::Authenticate`]: data | 32 [`Message::Bytes`]: the tag |
//! | 22 | [`Message::VerifyTag`]: data ‖ tag | 33 [`Message::Verdict`] |
//!
//! A vault that cannot serve a request (not provisioned) answers [`Message::Error`].
//!
//! The exchange ([`binding`]): after the TLS 1.3 handshake the owner sends a fresh nonce;
//! the vault answers with evidence whose 64-byte report_data is
//! `SHA-512(BINDING_LABEL ‖ len(spki) (u32 BE) ‖ spki ‖ nonce ‖ exporter ‖ owner)`, where
//! `spki` is the DER SubjectPublicKeyInfo of the vault's TLS certificate, `exporter` 32 bytes
//! of the TLS exporter with label [`EXPORTER_LABEL`] and no context, and `owner` the Ed25519
//! public key of the owner the vault was started for. The owner computes the same value from
//! its own view of the connection and requires the evidence to bind exactly it, so the
//! evidence proves that the TEE holds this connection's TLS key, now, and will take a key
//! only from this owner. Only then does it send the master key, signed with its owner key
//! over the same connection's exporter and nonce; the vault refuses a key without that
//! signature, so nobody else can provision it first.

#![forbid(unsafe_code)]

mod deadline;

use std::io::{Read, Write};

pub use deadline::{Deadline, SocketTimeouts};

use sealdb_attest::Format;
use sealdb_crypto::SecretKey;
use zeroize::Zeroizing;

/// The protocol version every frame carries.
pub const VERSION: u8 = 1;
/// The largest frame accepted (length field value).
pub const MAX_FRAME: usize = 1 << 20;
/// The TLS exporter label of the binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sealdb-provision-v1";
/// Domain separation of the binding hash.
pub const BINDING_LABEL: &[u8] = b"sealdb ra-tls binding v1";
/// Domain separation of the owner's signature on the master-key message.
pub const OWNER_SIGNATURE_LABEL: &[u8] = b"sealdb owner provisions v1";
/// The associated data of the key-check value the vault returns after provisioning
/// (`sealdb_crypto::AeadKey::check_value`).
pub const KEY_CHECK_AAD: &[u8] = b"sealdb-vault key-check v1";
/// Length of the owner's nonce.
pub const NONCE_LEN: usize = 32;
/// Length of the TLS exporter value in the binding.
pub const EXPORTER_LEN: usize = 32;
const MAX_KCV: usize = 256;
const MAX_ERROR: usize = 4096;

/// What is wrong with bytes received (or a connection).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// Reading or writing the connection failed (including a peer that closed early).
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than [`MAX_FRAME`] or shorter than its header.
    #[error("frame length {len} at offset 0 is outside 2..={MAX_FRAME}")]
    FrameLength {
        /// The length field.
        len: u64,
    },
    /// A frame of another protocol version.
    #[error("frame version {got} at offset 4, this build speaks {VERSION}")]
    Version {
        /// The version byte.
        got: u8,
    },
    /// An unknown message type.
    #[error("unknown message type {code} at offset 5")]
    UnknownType {
        /// The type byte.
        code: u8,
    },
    /// A payload of the wrong length.
    #[error("{what}: payload of {got} bytes, expected {expected}")]
    PayloadLength {
        /// The message.
        what: &'static str,
        /// What the message needs.
        expected: &'static str,
        /// What came.
        got: usize,
    },
    /// An unknown evidence format or vault state code.
    #[error("{what}: unknown code {code} at offset 6")]
    Code {
        /// The field.
        what: &'static str,
        /// The byte.
        code: u8,
    },
    /// Error text that is not UTF-8.
    #[error("error message is not UTF-8")]
    Utf8,
    /// The peer's certificate could not be read.
    #[error("TLS certificate: {0}")]
    Certificate(String),
    /// A message other than the one the exchange expects at this point.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the exchange expects.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
}

/// The vault's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VaultState {
    /// Waiting for the owner's master key.
    Unprovisioned,
    /// Holding a master key.
    Provisioned,
}

/// One message.
#[derive(Debug)]
#[non_exhaustive]
pub enum Message {
    /// The owner's fresh nonce.
    Challenge {
        /// 32 random bytes.
        nonce: [u8; NONCE_LEN],
    },
    /// The vault's evidence, bound to the nonce and the connection.
    Evidence {
        /// The evidence format.
        format: Format,
        /// The evidence bytes.
        evidence: Vec<u8>,
    },
    /// The master key, sent only after the evidence verified, with the owner's signature
    /// over [`owner_signed_message`] of this connection.
    MasterKey {
        /// The master key.
        key: SecretKey,
        /// Ed25519 signature by the owner's key.
        signature: [u8; 64],
    },
    /// The vault's key-check value of the master key it now holds.
    KeyCheck {
        /// See `sealdb_crypto::AeadKey::check_value`.
        kcv: Vec<u8>,
    },
    /// Asks for the vault's state.
    StatusRequest,
    /// The vault's state.
    Status {
        /// Provisioned or not.
        state: VaultState,
        /// The kind of TEE the vault runs in.
        tee: Format,
    },
    /// The vault refused a request.
    Error {
        /// Why (no secrets).
        message: String,
    },
    /// Engine: a key-check value of the master key over `aad`.
    MakeCheckValue {
        /// Associated data.
        aad: Vec<u8>,
    },
    /// Engine: does `kcv` check against the master key?
    VerifyCheckValue {
        /// Associated data.
        aad: Vec<u8>,
        /// The key-check value.
        kcv: Vec<u8>,
    },
    /// Engine: a new data key and its wrapped form.
    NewDataKey {
        /// Associated data of the wrapping.
        aad: Vec<u8>,
    },
    /// Engine: unwrap a data key.
    UnwrapDataKey {
        /// Associated data of the wrapping.
        aad: Vec<u8>,
        /// The wrapped key.
        wrapped: Vec<u8>,
    },
    /// Engine: wrap an existing data key under the master key.
    WrapDataKey {
        /// Associated data of the wrapping.
        aad: Vec<u8>,
        /// The data key.
        key: SecretKey,
    },
    /// Engine: a tag over `data` under the master key.
    Authenticate {
        /// The data.
        data: Vec<u8>,
    },
    /// Engine: does `tag` authenticate `data`?
    VerifyTag {
        /// The data.
        data: Vec<u8>,
        /// The tag.
        tag: Vec<u8>,
    },
    /// Vault: bytes (a key-check value, wrapped key or tag).
    Bytes {
        /// The bytes.
        data: Vec<u8>,
    },
    /// Vault: the answer to a check.
    Verdict {
        /// It authenticates.
        ok: bool,
    },
    /// Vault: a new data key.
    DataKey {
        /// The key.
        key: SecretKey,
        /// Its wrapped form.
        wrapped: Vec<u8>,
    },
    /// Vault: an unwrapped key, or `None` if the wrapped key did not authenticate.
    Unwrapped {
        /// The key.
        key: Option<SecretKey>,
    },
}

impl Message {
    /// The message's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Challenge { .. } => "Challenge",
            Message::Evidence { .. } => "Evidence",
            Message::MasterKey { .. } => "MasterKey",
            Message::KeyCheck { .. } => "KeyCheck",
            Message::StatusRequest => "StatusRequest",
            Message::Status { .. } => "Status",
            Message::Error { .. } => "Error",
            Message::MakeCheckValue { .. } => "MakeCheckValue",
            Message::VerifyCheckValue { .. } => "VerifyCheckValue",
            Message::NewDataKey { .. } => "NewDataKey",
            Message::UnwrapDataKey { .. } => "UnwrapDataKey",
            Message::WrapDataKey { .. } => "WrapDataKey",
            Message::Authenticate { .. } => "Authenticate",
            Message::VerifyTag { .. } => "VerifyTag",
            Message::Bytes { .. } => "Bytes",
            Message::Verdict { .. } => "Verdict",
            Message::DataKey { .. } => "DataKey",
            Message::Unwrapped { .. } => "Unwrapped",
        }
    }
}

fn format_code(f: Format) -> u8 {
    match f {
        Format::Sgx => 1,
        Format::Tdx => 2,
        Format::Snp => 3,
        Format::Nitro => 4,
        Format::Sim => 5,
        // A format added to sealdb-attest needs a code here first.
        _ => 0,
    }
}

fn format_of(code: u8) -> Result<Format, ProtoError> {
    Ok(match code {
        1 => Format::Sgx,
        2 => Format::Tdx,
        3 => Format::Snp,
        4 => Format::Nitro,
        5 => Format::Sim,
        code => {
            return Err(ProtoError::Code {
                what: "evidence format",
                code,
            })
        }
    })
}

/// The frame of `msg`, length prefix included, or an error if it would exceed
/// [`MAX_FRAME`]. Zeroized on drop (it may hold a key); allocated once, so no copy of a key
/// is left behind by a reallocation.
pub fn encode(msg: &Message) -> Result<Zeroizing<Vec<u8>>, ProtoError> {
    let variable = match msg {
        Message::Evidence { evidence, .. } => evidence.len(),
        Message::KeyCheck { kcv } => kcv.len(),
        Message::Error { message } => message.len().min(MAX_ERROR),
        Message::MakeCheckValue { aad } | Message::NewDataKey { aad } => aad.len(),
        Message::VerifyCheckValue { aad, kcv } => aad.len() + kcv.len(),
        Message::UnwrapDataKey { aad, wrapped } => aad.len() + wrapped.len(),
        Message::WrapDataKey { aad, .. } => aad.len(),
        Message::Authenticate { data } | Message::Bytes { data } => data.len(),
        Message::VerifyTag { data, tag } => data.len() + tag.len(),
        Message::DataKey { wrapped, .. } => wrapped.len(),
        _ => 0,
    };
    // Header, a pair's length prefix, and the fixed fields (at most a key and a signature).
    let capacity = 6 + 4 + variable + 96;
    if capacity - 4 > MAX_FRAME + 100 {
        return Err(ProtoError::FrameLength {
            len: capacity as u64,
        });
    }
    let mut body = Zeroizing::new(Vec::with_capacity(capacity));
    body.extend_from_slice(&[0u8; 4]);
    body.push(VERSION);
    match msg {
        Message::Challenge { nonce } => {
            body.push(1);
            body.extend_from_slice(nonce);
        }
        Message::Evidence { format, evidence } => {
            body.push(2);
            body.push(format_code(*format));
            body.extend_from_slice(evidence);
        }
        Message::MasterKey { key, signature } => {
            body.push(3);
            body.extend_from_slice(key.danger_export());
            body.extend_from_slice(signature);
        }
        Message::KeyCheck { kcv } => {
            body.push(4);
            body.extend_from_slice(kcv);
        }
        Message::StatusRequest => body.push(5),
        Message::Status { state, tee } => {
            body.push(6);
            body.push(match state {
                VaultState::Unprovisioned => 0,
                VaultState::Provisioned => 1,
            });
            body.push(format_code(*tee));
        }
        Message::Error { message } => {
            body.push(7);
            let mut end = message.len().min(MAX_ERROR);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            body.extend_from_slice(&message.as_bytes()[..end]);
        }
        Message::MakeCheckValue { aad } => {
            body.push(16);
            body.extend_from_slice(aad);
        }
        Message::VerifyCheckValue { aad, kcv } => {
            body.push(17);
            pair(&mut body, aad, kcv);
        }
        Message::NewDataKey { aad } => {
            body.push(18);
            body.extend_from_slice(aad);
        }
        Message::UnwrapDataKey { aad, wrapped } => {
            body.push(19);
            pair(&mut body, aad, wrapped);
        }
        Message::WrapDataKey { aad, key } => {
            body.push(20);
            pair(&mut body, aad, key.danger_export());
        }
        Message::Authenticate { data } => {
            body.push(21);
            body.extend_from_slice(data);
        }
        Message::VerifyTag { data, tag } => {
            body.push(22);
            pair(&mut body, data, tag);
        }
        Message::Bytes { data } => {
            body.push(32);
            body.extend_from_slice(data);
        }
        Message::Verdict { ok } => {
            body.push(33);
            body.push(u8::from(*ok));
        }
        Message::DataKey { key, wrapped } => {
            body.push(34);
            body.extend_from_slice(key.danger_export());
            body.extend_from_slice(wrapped);
        }
        Message::Unwrapped { key } => {
            body.push(35);
            if let Some(k) = key {
                body.extend_from_slice(k.danger_export());
            }
        }
    }
    let len = body.len() - 4;
    if len > MAX_FRAME {
        return Err(ProtoError::FrameLength { len: len as u64 });
    }
    body[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(body)
}

/// Appends `len(a) (u32 BE) ‖ a ‖ b`.
fn pair(body: &mut Vec<u8>, a: &[u8], b: &[u8]) {
    body.extend_from_slice(&u32::try_from(a.len()).unwrap_or(u32::MAX).to_be_bytes());
    body.extend_from_slice(a);
    body.extend_from_slice(b);
}

/// Splits `len(a) (u32 BE) ‖ a ‖ b`.
fn split_pair<'a>(what: &'static str, p: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), ProtoError> {
    let bad = || ProtoError::PayloadLength {
        what,
        expected: "a length-prefixed first field",
        got: p.len(),
    };
    let (len, rest) = p.split_first_chunk::<4>().ok_or_else(bad)?;
    let n = u32::from_be_bytes(*len) as usize;
    if n > rest.len() {
        return Err(bad());
    }
    Ok(rest.split_at(n))
}

fn key_of(what: &'static str, b: &[u8]) -> Result<SecretKey, ProtoError> {
    SecretKey::from_slice(b).map_err(|_| ProtoError::PayloadLength {
        what,
        expected: "a 32-byte key",
        got: b.len(),
    })
}

/// Decodes a frame body (after the length): version, type, payload. Never panics.
pub fn decode(body: &[u8]) -> Result<Message, ProtoError> {
    let [version, kind, payload @ ..] = body else {
        return Err(ProtoError::FrameLength {
            len: body.len() as u64,
        });
    };
    if *version != VERSION {
        return Err(ProtoError::Version { got: *version });
    }
    let exact = |what: &'static str, expected: &'static str, n: usize| {
        if payload.len() == n {
            Ok(())
        } else {
            Err(ProtoError::PayloadLength {
                what,
                expected,
                got: payload.len(),
            })
        }
    };
    Ok(match kind {
        1 => {
            exact("Challenge", "32", NONCE_LEN)?;
            let mut nonce = [0u8; NONCE_LEN];
            nonce.copy_from_slice(payload);
            Message::Challenge { nonce }
        }
        2 => {
            let [code, evidence @ ..] = payload else {
                return Err(ProtoError::PayloadLength {
                    what: "Evidence",
                    expected: "at least 1",
                    got: 0,
                });
            };
            Message::Evidence {
                format: format_of(*code)?,
                evidence: evidence.to_vec(),
            }
        }
        3 => {
            exact("MasterKey", "96", sealdb_crypto::KEY_LEN + 64)?;
            let (key, sig) = payload.split_at(sealdb_crypto::KEY_LEN);
            let mut signature = [0u8; 64];
            signature.copy_from_slice(sig);
            Message::MasterKey {
                key: key_of("MasterKey", key)?,
                signature,
            }
        }
        4 => {
            if payload.len() > MAX_KCV {
                return Err(ProtoError::PayloadLength {
                    what: "KeyCheck",
                    expected: "at most 256",
                    got: payload.len(),
                });
            }
            Message::KeyCheck {
                kcv: payload.to_vec(),
            }
        }
        5 => {
            exact("StatusRequest", "0", 0)?;
            Message::StatusRequest
        }
        6 => {
            exact("Status", "2", 2)?;
            let state = match payload[0] {
                0 => VaultState::Unprovisioned,
                1 => VaultState::Provisioned,
                code => {
                    return Err(ProtoError::Code {
                        what: "vault state",
                        code,
                    })
                }
            };
            Message::Status {
                state,
                tee: format_of(payload[1])?,
            }
        }
        7 => {
            if payload.len() > MAX_ERROR {
                return Err(ProtoError::PayloadLength {
                    what: "Error",
                    expected: "at most 4096",
                    got: payload.len(),
                });
            }
            Message::Error {
                message: String::from_utf8(payload.to_vec()).map_err(|_| ProtoError::Utf8)?,
            }
        }
        16 => Message::MakeCheckValue {
            aad: payload.to_vec(),
        },
        17 => {
            let (aad, kcv) = split_pair("VerifyCheckValue", payload)?;
            Message::VerifyCheckValue {
                aad: aad.to_vec(),
                kcv: kcv.to_vec(),
            }
        }
        18 => Message::NewDataKey {
            aad: payload.to_vec(),
        },
        19 => {
            let (aad, wrapped) = split_pair("UnwrapDataKey", payload)?;
            Message::UnwrapDataKey {
                aad: aad.to_vec(),
                wrapped: wrapped.to_vec(),
            }
        }
        20 => {
            let (aad, key) = split_pair("WrapDataKey", payload)?;
            Message::WrapDataKey {
                aad: aad.to_vec(),
                key: key_of("WrapDataKey", key)?,
            }
        }
        21 => Message::Authenticate {
            data: payload.to_vec(),
        },
        22 => {
            let (data, tag) = split_pair("VerifyTag", payload)?;
            Message::VerifyTag {
                data: data.to_vec(),
                tag: tag.to_vec(),
            }
        }
        32 => Message::Bytes {
            data: payload.to_vec(),
        },
        33 => match payload {
            [0] => Message::Verdict { ok: false },
            [1] => Message::Verdict { ok: true },
            _ => {
                return Err(ProtoError::PayloadLength {
                    what: "Verdict",
                    expected: "1 byte, 0 or 1",
                    got: payload.len(),
                })
            }
        },
        34 => {
            if payload.len() < sealdb_crypto::KEY_LEN {
                return Err(ProtoError::PayloadLength {
                    what: "DataKey",
                    expected: "at least 32",
                    got: payload.len(),
                });
            }
            let (key, wrapped) = payload.split_at(sealdb_crypto::KEY_LEN);
            Message::DataKey {
                key: key_of("DataKey", key)?,
                wrapped: wrapped.to_vec(),
            }
        }
        35 => Message::Unwrapped {
            key: match payload.len() {
                0 => None,
                _ => Some(key_of("Unwrapped", payload)?),
            },
        },
        code => return Err(ProtoError::UnknownType { code: *code }),
    })
}

/// Writes one message and flushes.
pub fn write_message(w: &mut impl Write, msg: &Message) -> Result<(), ProtoError> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one message.
pub fn read_message(r: &mut impl Read) -> Result<Message, ProtoError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if !(2..=MAX_FRAME).contains(&len) {
        return Err(ProtoError::FrameLength { len: len as u64 });
    }
    // Grows as bytes arrive, so a peer that announces a large frame and sends nothing
    // holds no large buffer. Reserved whole first: no reallocation leaves key bytes behind.
    let mut body = Zeroizing::new(Vec::new());
    body.try_reserve_exact(len.min(64 * 1024))
        .map_err(|_| ProtoError::FrameLength { len: len as u64 })?;
    let mut limited = r.take(len as u64);
    let mut chunk = Zeroizing::new([0u8; 8192]);
    while body.len() < len {
        let n = limited.read(&mut chunk[..])?;
        if n == 0 {
            return Err(ProtoError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        if body.len() + n > body.capacity() {
            // Move to a buffer of the full size, wiping the old one.
            let mut bigger = Zeroizing::new(Vec::with_capacity(len));
            bigger.extend_from_slice(&body);
            body = bigger;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    decode(&body)
}

/// The report_data that binds evidence to a TLS session and an owner (see the crate
/// documentation).
pub fn binding(
    spki: &[u8],
    nonce: &[u8; NONCE_LEN],
    exporter: &[u8; EXPORTER_LEN],
    owner: &[u8; 32],
) -> [u8; 64] {
    let mut m = Vec::with_capacity(BINDING_LABEL.len() + 4 + spki.len() + 96);
    m.extend_from_slice(BINDING_LABEL);
    m.extend_from_slice(&u32::try_from(spki.len()).unwrap_or(u32::MAX).to_be_bytes());
    m.extend_from_slice(spki);
    m.extend_from_slice(nonce);
    m.extend_from_slice(exporter);
    m.extend_from_slice(owner);
    sealdb_crypto::sha512(&m)
}

/// What the owner signs to provision a vault on one connection:
/// `OWNER_SIGNATURE_LABEL ‖ exporter ‖ nonce`.
pub fn owner_signed_message(exporter: &[u8; EXPORTER_LEN], nonce: &[u8; NONCE_LEN]) -> Vec<u8> {
    let mut m = OWNER_SIGNATURE_LABEL.to_vec();
    m.extend_from_slice(exporter);
    m.extend_from_slice(nonce);
    m
}

/// The DER SubjectPublicKeyInfo of a DER certificate.
pub fn spki_of_certificate(cert_der: &[u8]) -> Result<Vec<u8>, ProtoError> {
    use der::{Decode, Encode};
    let c = x509_cert::Certificate::from_der(cert_der)
        .map_err(|e| ProtoError::Certificate(e.to_string()))?;
    c.tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| ProtoError::Certificate(e.to_string()))
}

/// Entry points for the fuzz targets.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    /// Decodes `data` as a frame stream and as a certificate; must never panic.
    pub fn frames(data: &[u8]) {
        let mut r = data;
        while super::read_message(&mut r).is_ok() {}
        let _ = super::decode(data);
        let _ = super::spki_of_certificate(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(msg: &Message) -> Message {
        let bytes = encode(msg).unwrap();
        let mut r = &bytes[..];
        let back = read_message(&mut r).unwrap();
        assert!(r.is_empty());
        back
    }

    /// A reader that gives one byte per call, as a slow peer does.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((first, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(b) => *b = *first,
                None => return Ok(0),
            }
            self.0 = rest;
            Ok(1)
        }
    }

    #[test]
    fn a_frame_larger_than_the_first_reservation_arrives_whole_or_not_at_all() {
        // 200 KiB: past the 64 KiB reserved before the bytes arrive, so the buffer moves.
        let evidence: Vec<u8> = (0..200 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let msg = Message::Evidence {
            format: Format::Tdx,
            evidence: evidence.clone(),
        };
        let bytes = encode(&msg).unwrap();
        match read_message(&mut Trickle(&bytes)).unwrap() {
            Message::Evidence {
                format,
                evidence: e,
            } => {
                assert_eq!(format, Format::Tdx);
                assert!(e == evidence, "the evidence changed on the way");
            }
            other => panic!("{other:?}"),
        }
        // Cut anywhere in the body, before or after the buffer moved: an EOF error.
        for cut in [10, 64 * 1024, 64 * 1024 + 5, bytes.len() - 1] {
            let e = read_message(&mut &bytes[..cut]).unwrap_err();
            assert!(
                matches!(e, ProtoError::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof),
                "cut at {cut}: {e:?}"
            );
        }
    }

    #[test]
    fn every_message_round_trips() {
        let m = round_trip(&Message::Challenge { nonce: [9; 32] });
        assert!(matches!(m, Message::Challenge { nonce } if nonce == [9; 32]));
        let m = round_trip(&Message::Evidence {
            format: Format::Snp,
            evidence: vec![1, 2, 3],
        });
        assert!(
            matches!(m, Message::Evidence { format: Format::Snp, ref evidence } if evidence == &[1, 2, 3])
        );
        let key = SecretKey::from_slice(&[7; 32]).unwrap();
        let Message::MasterKey {
            key: back,
            signature,
        } = round_trip(&Message::MasterKey {
            key,
            signature: [8; 64],
        })
        else {
            panic!("not a key")
        };
        assert!(back.ct_eq(&SecretKey::from_slice(&[7; 32]).unwrap()));
        assert_eq!(signature, [8; 64]);
        // Too large to send.
        assert!(encode(&Message::Bytes {
            data: vec![0; MAX_FRAME]
        })
        .is_err());
        let m = round_trip(&Message::KeyCheck { kcv: vec![5; 44] });
        assert!(matches!(m, Message::KeyCheck { ref kcv } if kcv == &[5; 44]));
        assert!(matches!(
            round_trip(&Message::StatusRequest),
            Message::StatusRequest
        ));
        let m = round_trip(&Message::Status {
            state: VaultState::Provisioned,
            tee: Format::Sim,
        });
        assert!(matches!(
            m,
            Message::Status {
                state: VaultState::Provisioned,
                tee: Format::Sim
            }
        ));
        let m = round_trip(&Message::Error {
            message: "é".repeat(3000),
        });
        assert!(matches!(m, Message::Error { ref message } if message.len() <= MAX_ERROR));
    }

    #[test]
    fn engine_messages_round_trip() {
        let m = round_trip(&Message::VerifyCheckValue {
            aad: b"aad".to_vec(),
            kcv: vec![1, 2],
        });
        assert!(
            matches!(m, Message::VerifyCheckValue { ref aad, ref kcv } if aad == b"aad" && kcv == &[1, 2])
        );
        let m = round_trip(&Message::UnwrapDataKey {
            aad: Vec::new(),
            wrapped: vec![3; 60],
        });
        assert!(
            matches!(m, Message::UnwrapDataKey { ref aad, ref wrapped } if aad.is_empty() && wrapped == &[3; 60])
        );
        let Message::WrapDataKey { aad, key } = round_trip(&Message::WrapDataKey {
            aad: b"x".to_vec(),
            key: SecretKey::from_slice(&[4; 32]).unwrap(),
        }) else {
            panic!()
        };
        assert_eq!(aad, b"x");
        assert!(key.ct_eq(&SecretKey::from_slice(&[4; 32]).unwrap()));
        let Message::DataKey { key, wrapped } = round_trip(&Message::DataKey {
            key: SecretKey::from_slice(&[5; 32]).unwrap(),
            wrapped: vec![6; 60],
        }) else {
            panic!()
        };
        assert!(key.ct_eq(&SecretKey::from_slice(&[5; 32]).unwrap()));
        assert_eq!(wrapped, vec![6; 60]);
        assert!(matches!(
            round_trip(&Message::Unwrapped { key: None }),
            Message::Unwrapped { key: None }
        ));
        assert!(matches!(
            round_trip(&Message::Verdict { ok: true }),
            Message::Verdict { ok: true }
        ));
        let m = round_trip(&Message::VerifyTag {
            data: b"body".to_vec(),
            tag: vec![7; 28],
        });
        assert!(
            matches!(m, Message::VerifyTag { ref data, ref tag } if data == b"body" && tag == &[7; 28])
        );
        for m in [
            Message::MakeCheckValue { aad: vec![1] },
            Message::NewDataKey { aad: vec![2] },
            Message::Authenticate { data: vec![3] },
            Message::Bytes { data: vec![4] },
        ] {
            assert_eq!(round_trip(&m).name(), m.name());
        }
        let err = |bytes: &[u8]| read_message(&mut &bytes[..]).unwrap_err().to_string();
        assert!(err(&[0, 0, 0, 6, 1, 17, 0, 0, 0, 9]).contains("VerifyCheckValue"));
        assert!(err(&[0, 0, 0, 3, 1, 33, 2]).contains("Verdict"));
        assert!(err(&[0, 0, 0, 4, 1, 35, 1, 2]).contains("Unwrapped"));
        assert!(err(&[0, 0, 0, 3, 1, 34, 1]).contains("DataKey"));
    }

    #[test]
    fn bad_frames_are_named() {
        let err = |bytes: &[u8]| read_message(&mut &bytes[..]).unwrap_err().to_string();
        assert!(err(&[0, 0, 0, 1, 1]).contains("frame length 1"));
        assert!(err(&[0x7f, 0, 0, 0]).contains("outside"));
        assert!(err(&[0, 0, 0, 2, 2, 1]).contains("version 2"));
        assert!(err(&[0, 0, 0, 2, 1, 99]).contains("unknown message type 99"));
        assert!(err(&[0, 0, 0, 3, 1, 1, 0]).contains("Challenge: payload of 1 bytes"));
        assert!(err(&[
            0, 0, 0, 34, 1, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0
        ])
        .contains("MasterKey: payload of 32 bytes"));
        assert!(err(&[0, 0, 0, 3, 1, 2, 9]).contains("evidence format: unknown code 9"));
        assert!(err(&[0, 0, 0, 4, 1, 6, 3, 5]).contains("vault state: unknown code 3"));
        assert!(err(&[0, 0, 0, 3, 1, 7, 0xff]).contains("UTF-8"));
        assert!(err(&[0, 0, 0, 9, 1, 1]).contains("connection"));
        assert!(err(&[0, 0]).contains("connection"));
    }

    #[test]
    fn the_binding_covers_every_input() {
        let o = [9; 32];
        let b = binding(b"spki", &[1; 32], &[2; 32], &o);
        assert_ne!(b, binding(b"spkj", &[1; 32], &[2; 32], &o));
        assert_ne!(b, binding(b"spki", &[3; 32], &[2; 32], &o));
        assert_ne!(b, binding(b"spki", &[1; 32], &[3; 32], &o));
        assert_ne!(b, binding(b"spki", &[1; 32], &[2; 32], &[8; 32]));
        // The length prefix keeps spki and nonce apart.
        let mut long = b"spki".to_vec();
        long.push(1);
        assert_ne!(b, binding(&long, &[1; 32], &[2; 32], &o));
        let mut m = BINDING_LABEL.to_vec();
        m.extend_from_slice(&[0, 0, 0, 4]);
        m.extend_from_slice(b"spki");
        m.extend_from_slice(&[1; 32]);
        m.extend_from_slice(&[2; 32]);
        m.extend_from_slice(&o);
        assert_eq!(b, sealdb_crypto::sha512(&m));
    }

    #[test]
    fn fuzz_entry_survives_random_input() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..3000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 128) as usize;
            let mut data: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            // Half of the inputs get a valid header: length, version 1, a known type.
            if x.is_multiple_of(2) && len >= 6 {
                let types = [
                    1u8, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 32, 33, 34, 35,
                ];
                data[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
                data[4] = VERSION;
                data[5] = types[(x >> 8) as usize % types.len()];
            }
            fuzzing::frames(&data);
        }
    }
}
