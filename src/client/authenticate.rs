//! The password exchange of a client login, per `auth_type`, for known and unknown users.
//!
//! Owns: asking for and checking the password (cleartext, md5, SCRAM-SHA-256), and the
//! stand-in secrets of users that do not exist, so an unknown user goes through the same
//! messages and ends with the same 28P01 as a wrong password (as PostgreSQL does with its
//! mock SCRAM verifier): user names cannot be probed.
//!
//! Must not: look at anything but the user's secret; what happens after authentication
//! (client limits, databases, sessions) belongs to the caller.

use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Reject;
use crate::app::App;
use crate::auth::{self, ScramServer, ScramVerifier};
use crate::config::{AuthType, PasswordKind, User};
use crate::protocol;

/// PostgreSQL's message for a failed password check (also for unknown users).
pub(super) fn auth_failed(user: &str) -> Reject {
    Reject(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Runs the exchange for `name` (as the client sent it). `user` is `None` for an unknown
/// user: the exchange runs against a stand-in secret and always fails with 28P01.
/// Not for `trust` (no exchange at all).
pub(super) async fn authenticate(
    app: &Arc<App>,
    stream: &mut TcpStream,
    out: &mut BytesMut,
    name: &str,
    user: Option<&User>,
    auth_type: AuthType,
) -> Result<(), Reject> {
    let mut buf = BytesMut::new();
    match auth_type {
        AuthType::Trust => Ok(()),
        AuthType::Plain => {
            protocol::auth_cleartext(out);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let mut b = protocol::body(&f);
            let pw = protocol::read_cstr(&mut b)?;
            let ok = match user.and_then(|u| u.password.as_deref()) {
                Some(stored) => auth::cleartext_verify(name, stored, pw),
                None => {
                    // The same constant-time comparison a plain stored password gets.
                    let _ = auth::ct_eq(mock_digest("plain", name).as_slice(), pw);
                    false
                }
            };
            if ok {
                Ok(())
            } else {
                Err(auth_failed(name))
            }
        }
        AuthType::Md5 => {
            let hash = user.and_then(|u| match u.password_kind() {
                Some(PasswordKind::Plain(p)) => Some(auth::md5_stored(name, &p)),
                Some(PasswordKind::Md5Hash(h)) => Some(h),
                _ => None,
            });
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| mock_md5_hash(name));
            let salt = auth::random_md5_salt();
            protocol::auth_md5(out, salt);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let mut b = protocol::body(&f);
            let resp = protocol::read_cstr(&mut b)?;
            if auth::md5_verify(&hash, salt, resp) && known {
                Ok(())
            } else {
                Err(auth_failed(name))
            }
        }
        AuthType::ScramSha256 => {
            let (verifier, known) = match user.and_then(|u| app.scram_verifier(u)) {
                Some(v) => ((*v).clone(), true),
                None => (mock_scram_verifier(name), false),
            };
            protocol::auth_sasl(out, "SCRAM-SHA-256");
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let (mech, data) = protocol::parse_sasl_initial(&f)?;
            if mech != b"SCRAM-SHA-256" {
                return Err(Reject(
                    "28000",
                    "SASL authentication mechanism not supported: use SCRAM-SHA-256".into(),
                ));
            }
            let mut server = ScramServer::new(verifier);
            let first = server
                .handle_client_first(data)
                .map_err(|_| auth_failed(name))?;
            protocol::auth_sasl_continue(out, &first);
            stream.write_all(out).await?;
            out.clear();
            let f = read_password_frame(stream, &mut buf).await?;
            let fin = server
                .handle_client_final(protocol::body(&f))
                .map_err(|_| auth_failed(name))?;
            if !known {
                return Err(auth_failed(name)); // unreachable in practice: no one has the key
            }
            protocol::auth_sasl_final(out, &fin);
            Ok(())
        }
    }
}

/// Read one message of the authentication exchange; it must be a 'p' message.
async fn read_password_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
) -> Result<bytes::Bytes, Reject> {
    loop {
        if let Some(f) = protocol::split_frame(buf, protocol::MAX_STARTUP_LEN)? {
            if f[0] != b'p' {
                return Err(Reject(
                    "08P01",
                    format!(
                        "expected password response, got message type {:?}",
                        f[0] as char
                    ),
                ));
            }
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(Reject("08006", "client closed the connection".into()));
        }
    }
}

/// 32 bytes derived from a per-process random key, a purpose tag and the user name: stable
/// for one name within the process (the same unknown user sees the same salt every time, as
/// a real user does), unpredictable and different across names.
fn mock_digest(tag: &str, name: &str) -> [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(rand::random);
    Sha256::new()
        .chain_update(key)
        .chain_update(tag.as_bytes())
        .chain_update([0])
        .chain_update(name.as_bytes())
        .finalize()
        .into()
}

/// A SCRAM verifier no password matches, shaped like real ones (4096 iterations, 16-byte
/// salt; PostgreSQL's `scram_mock_salt` does the same).
fn mock_scram_verifier(name: &str) -> ScramVerifier {
    ScramVerifier {
        iterations: 4096,
        salt: mock_digest("salt", name)[..16].to_vec(),
        stored_key: mock_digest("stored", name),
        server_key: mock_digest("server", name),
    }
}

/// An md5 secret no password matches.
fn mock_md5_hash(name: &str) -> String {
    let d = mock_digest("md5", name);
    let mut s = String::from("md5");
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_secrets_are_stable_per_name_and_differ_between_names() {
        assert_eq!(mock_scram_verifier("a"), mock_scram_verifier("a"));
        assert_ne!(mock_scram_verifier("a").salt, mock_scram_verifier("b").salt);
        let v = mock_scram_verifier("a");
        assert_eq!((v.iterations, v.salt.len()), (4096, 16));
        let h = mock_md5_hash("a");
        assert!(auth::is_md5_hash(&h), "{h}");
        assert_ne!(h, mock_md5_hash("b"));
    }
}
