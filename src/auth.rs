//! Authentication: verifying client credentials (SCRAM-SHA-256 server side,
//! md5, cleartext) and producing backend credentials (SCRAM client via
//! `postgres-protocol`, md5).
//!
//! Everything here is a pure state machine over byte slices: this module never
//! does socket I/O. The client/server modules move the bytes (SASL payloads,
//! password messages) and call into these functions.

use std::fmt::{self, Write as _};
use std::mem;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use md5::Md5;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use sha2::{Digest, Sha256};

/// An authentication failure or protocol violation.
#[derive(Debug)]
pub struct AuthError(pub String);

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "authentication error: {}", self.0)
    }
}

impl std::error::Error for AuthError {}

fn err<T>(msg: impl Into<String>) -> Result<T, AuthError> {
    Err(AuthError(msg.into()))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// Constant-time comparison helper for passwords and digests. Lengths are
/// not secret: unequal lengths return `false` immediately.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(diff) == 0
}

/// A stored SCRAM verifier, as in `pg_authid`:
/// `SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

fn decode_key(s: &str) -> Option<[u8; 32]> {
    B64.decode(s).ok()?.try_into().ok()
}

impl ScramVerifier {
    /// Parses a `pg_authid`-style SCRAM-SHA-256 secret.
    pub fn parse(s: &str) -> Result<ScramVerifier, AuthError> {
        let parse = || {
            let (iter_salt, keys) = s.strip_prefix("SCRAM-SHA-256$")?.split_once('$')?;
            let ((iter, salt), (stored, server)) =
                (iter_salt.split_once(':')?, keys.split_once(':')?);
            Some(ScramVerifier {
                iterations: iter.parse().ok().filter(|&n| n > 0)?,
                salt: B64.decode(salt).ok().filter(|s| !s.is_empty())?,
                stored_key: decode_key(stored)?,
                server_key: decode_key(server)?,
            })
        };
        parse().ok_or_else(|| AuthError("malformed SCRAM-SHA-256 verifier".into()))
    }

    /// Builds a verifier from a cleartext password (random 16-byte salt,
    /// 4096 iterations, SASLprep as PostgreSQL does).
    pub fn from_password(password: &str) -> ScramVerifier {
        let s = postgres_protocol::password::scram_sha_256(password.as_bytes());
        ScramVerifier::parse(&s).expect("postgres-protocol produces well-formed verifiers")
    }
}

enum ServerState {
    /// Waiting for client-first; holds the server nonce suffix.
    Initial(String),
    Sent(Pending),
    Done,
}

/// What the server remembers between server-first and client-final.
struct Pending {
    /// Expected `c=` value: base64 of the gs2 header ("biws" / "eSws").
    cbind: &'static str,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

/// Server side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL does it:
/// mechanism `SCRAM-SHA-256` only, no channel binding (gs2 flag `p` is
/// rejected, `y` and `n` accepted), the username in client-first is ignored.
///
/// Any error is terminal: the exchange cannot be resumed or replayed.
pub struct ScramServer {
    verifier: ScramVerifier,
    state: ServerState,
}

fn is_printable_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// An extension attribute: `<letter>=<value>`.
fn is_attr(a: &str) -> bool {
    matches!(a.as_bytes(), [k, b'=', ..] if k.is_ascii_alphabetic())
}

impl ScramServer {
    pub fn new(verifier: ScramVerifier) -> Self {
        // 18 random bytes, as PostgreSQL's SCRAM_RAW_NONCE_LEN.
        let raw: [u8; 18] = rand::random();
        Self::with_server_nonce(verifier, B64.encode(raw))
    }

    /// Uses a fixed server nonce suffix (lets tests replay RFC vectors).
    fn with_server_nonce(verifier: ScramVerifier, server_nonce: String) -> Self {
        let state = ServerState::Initial(server_nonce);
        ScramServer { verifier, state }
    }

    /// Input: the SASLInitialResponse's data bytes (client-first-message).
    /// Output: server-first-message bytes for AuthenticationSASLContinue.
    pub fn handle_client_first(&mut self, client_first: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::Initial(server_nonce) = mem::replace(&mut self.state, ServerState::Done)
        else {
            return err("unexpected SCRAM client-first-message");
        };
        let msg = std::str::from_utf8(client_first)
            .map_err(|_| AuthError("SCRAM client-first-message is not valid UTF-8".into()))?;
        // gs2 header: cbind flag, then an (unsupported) authzid.
        let (cbind, bare) = match msg.as_bytes() {
            [b'n', b',', b',', ..] => ("biws", &msg[3..]),
            [b'y', b',', b',', ..] => ("eSws", &msg[3..]),
            [b'p', ..] => return err("SCRAM channel binding is not supported"),
            [_, b',', b'a', b'=', ..] => return err("SCRAM authzid is not supported"),
            _ => return err("malformed SCRAM client-first-message (gs2 header)"),
        };
        let mut attrs = bare.split(',');
        // Username is ignored like PostgreSQL does (a leading mandatory
        // extension "m=" is rejected here too).
        if !attrs.next().is_some_and(|a| a.starts_with("n=")) {
            return err("malformed SCRAM client-first-message (username)");
        }
        let client_nonce = match attrs.next().and_then(|a| a.strip_prefix("r=")) {
            Some(n) if is_printable_nonce(n) => n,
            _ => return err("malformed SCRAM client-first-message (nonce)"),
        };
        if !attrs.all(is_attr) {
            return err("malformed SCRAM client-first-message (attribute expected)");
        }
        let nonce = format!("{client_nonce}{server_nonce}");
        let v = &self.verifier;
        let server_first = format!("r={nonce},s={},i={}", B64.encode(&v.salt), v.iterations);
        let out = server_first.as_bytes().to_vec();
        self.state = ServerState::Sent(Pending {
            cbind,
            client_first_bare: bare.to_owned(),
            server_first,
            nonce,
        });
        Ok(out)
    }

    /// Input: the SASLResponse data (client-final-message). Verifies the
    /// channel-binding attribute, the nonce and the proof. Output: the
    /// server-final-message (`v=<ServerSignature>`) for AuthenticationSASLFinal.
    pub fn handle_client_final(&mut self, client_final: &[u8]) -> Result<Vec<u8>, AuthError> {
        let ServerState::Sent(p) = mem::replace(&mut self.state, ServerState::Done) else {
            return err("unexpected SCRAM client-final-message");
        };
        let msg = std::str::from_utf8(client_final)
            .map_err(|_| AuthError("SCRAM client-final-message is not valid UTF-8".into()))?;
        let Some((without_proof, proof_b64)) = msg.rsplit_once(",p=") else {
            return err("malformed SCRAM client-final-message (proof)");
        };
        let mut attrs = without_proof.split(',');
        if attrs.next().and_then(|a| a.strip_prefix("c=")) != Some(p.cbind) {
            return err("SCRAM channel binding check failed");
        }
        match attrs.next().and_then(|a| a.strip_prefix("r=")) {
            Some(n) if n == p.nonce => {}
            _ => return err("SCRAM nonce mismatch"),
        }
        if !attrs.all(is_attr) {
            return err("malformed SCRAM client-final-message (attribute expected)");
        }
        let proof: [u8; 32] = match B64.decode(proof_b64).map(<[u8; 32]>::try_from) {
            Ok(Ok(p)) => p,
            _ => return err("malformed SCRAM client-final-message (proof)"),
        };

        let auth_message = format!("{},{},{without_proof}", p.client_first_bare, p.server_first);
        let v = &self.verifier;
        let client_signature = hmac_sha256(&v.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(client_signature) {
            *k ^= s;
        }
        let computed_stored_key = Sha256::digest(client_key);
        if !ct_eq(&computed_stored_key, &v.stored_key) {
            return err("SCRAM password authentication failed");
        }
        let server_signature = hmac_sha256(&v.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

/// Client side SCRAM-SHA-256 for talking to backends: a thin wrapper over
/// `postgres_protocol`'s [`ScramSha256`] without channel binding.
pub struct ScramClient {
    inner: ScramSha256,
    first: Vec<u8>,
}

impl ScramClient {
    pub fn new(password: &str) -> Self {
        Self::from_bytes(password.as_bytes())
    }

    fn from_bytes(password: &[u8]) -> Self {
        let inner = ScramSha256::new(password, ChannelBinding::unsupported());
        let first = inner.message().to_vec();
        ScramClient { inner, first }
    }

    /// The client-first-message for SASLInitialResponse.
    pub fn client_first(&self) -> Vec<u8> {
        self.first.clone()
    }

    /// Input: AuthenticationSASLContinue data. Output: client-final-message.
    pub fn handle_server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let res = self.inner.update(data);
        res.map_err(|e| AuthError(format!("backend SCRAM: {e}")))?;
        Ok(self.inner.message().to_vec())
    }

    /// Input: AuthenticationSASLFinal data. Verifies the server signature.
    pub fn handle_server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let res = self.inner.finish(data);
        res.map_err(|e| AuthError(format!("backend SCRAM: {e}")))
    }
}

/// "md5" + lowercase hex of md5(concatenation of `parts`).
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    parts.iter().for_each(|p| h.update(p));
    h.finalize().iter().fold(String::from("md5"), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Whether `s` is a PostgreSQL md5 secret: "md5" + 32 lowercase hex digits.
pub fn is_md5_hash(s: &str) -> bool {
    let hex = |b: u8| matches!(b, b'0'..=b'9' | b'a'..=b'f');
    s.len() == 35 && s.starts_with("md5") && s.bytes().skip(3).all(hex)
}

/// The md5 secret PostgreSQL stores: "md5" + hex(md5(password + username)).
pub fn md5_stored(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// Verifies a client's md5 PasswordMessage (without trailing NUL) against
/// the stored secret and the 4-byte salt that was sent to it.
pub fn md5_verify(stored_md5_hash: &str, salt: [u8; 4], client_response: &[u8]) -> bool {
    if !is_md5_hash(stored_md5_hash) {
        return false;
    }
    let expected = md5_hex(&[&stored_md5_hash.as_bytes()[3..], &salt]);
    ct_eq(expected.as_bytes(), client_response)
}

/// Computes the md5 response to send to a backend. If `password_or_md5hash`
/// already is an md5 secret ("md5" + 32 hex), it is used as the inner hash.
pub fn md5_client_response(user: &str, password_or_md5hash: &str, salt: [u8; 4]) -> String {
    let inner = if is_md5_hash(password_or_md5hash) {
        password_or_md5hash.to_owned()
    } else {
        md5_stored(user, password_or_md5hash)
    };
    md5_hex(&[&inner.as_bytes()[3..], &salt])
}

pub fn random_md5_salt() -> [u8; 4] {
    rand::random()
}

/// Verifies a cleartext password (PasswordMessage without trailing NUL)
/// against a stored secret, which may be a SCRAM verifier, an md5 secret or
/// a plain password. For SCRAM, a complete in-memory exchange is run.
pub fn cleartext_verify(user: &str, stored: &str, password: &[u8]) -> bool {
    if stored.starts_with("SCRAM-SHA-256$") {
        let Ok(verifier) = ScramVerifier::parse(stored) else {
            return false;
        };
        let mut server = ScramServer::new(verifier);
        let mut client = ScramClient::from_bytes(password);
        let sf = server.handle_client_first(&client.client_first());
        let cf = sf.and_then(|sf| client.handle_server_first(&sf));
        cf.and_then(|cf| server.handle_client_final(&cf)).is_ok()
    } else if is_md5_hash(stored) {
        let computed = md5_hex(&[password, user.as_bytes()]);
        ct_eq(computed.as_bytes(), stored.as_bytes())
    } else {
        ct_eq(stored.as_bytes(), password)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const NONCE: &str = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const PROOF: &str = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

    fn exchange(v: &ScramVerifier, client_pw: &str) -> Result<(), AuthError> {
        let (mut server, mut client) = (ScramServer::new(v.clone()), ScramClient::new(client_pw));
        let sf = server.handle_client_first(&client.client_first())?;
        let cf = client.handle_server_first(&sf)?;
        client.handle_server_final(&server.handle_client_final(&cf)?)?;
        assert!(server.handle_client_final(&cf).is_err(), "replay accepted");
        Ok(())
    }

    #[test]
    fn scram_interop_with_postgres_protocol() {
        let v = ScramVerifier::from_password("s3cret");
        assert_eq!((v.iterations, v.salt.len()), (4096, 16));
        exchange(&v, "s3cret").unwrap();
        assert!(exchange(&v, "wrong").is_err());
        // gs2 flag 'y': client supports channel binding, server did not offer it.
        let mut server = ScramServer::new(v.clone());
        let mut c = ScramSha256::new(b"s3cret", ChannelBinding::unrequested());
        let sf = server.handle_client_first(c.message()).unwrap();
        c.update(&sf).unwrap();
        assert!(c.message().starts_with(b"c=eSws,"));
        let fin = server.handle_client_final(c.message()).unwrap();
        c.finish(&fin).unwrap();
        // The client rejects a forged server signature.
        let (mut server, mut client) = (ScramServer::new(v), ScramClient::new("s3cret"));
        let sf = server.handle_client_first(&client.client_first()).unwrap();
        client.handle_server_first(&sf).unwrap();
        let forged = format!("v={}", B64.encode([7u8; 32]));
        assert!(client.handle_server_final(forged.as_bytes()).is_err());
    }

    #[test]
    fn verifier_parse() {
        let s = postgres_protocol::password::scram_sha_256(b"pw");
        let v = ScramVerifier::parse(&s).unwrap();
        assert_eq!((v.iterations, v.salt.len()), (4096, 16));
        let (k, k31) = (B64.encode([1u8; 32]), B64.encode([1u8; 31]));
        assert!(ScramVerifier::parse(&format!("SCRAM-SHA-256$1:c2FsdA==${k}:{k}")).is_ok());
        // K = valid 32-byte key, # = 31-byte key; '|' separates cases.
        let bad = "|SCRAM-SHA-256$4096:c2FsdA==|SCRAM-SHA-256$4096:c2FsdA==$K|\
            SCRAM-SHA-256$4096c2FsdA==$K:K|SCRAM-SHA-256$0:c2FsdA==$K:K|\
            SCRAM-SHA-256$-1:c2FsdA==$K:K|SCRAM-SHA-256$4096:!!!$K:K|SCRAM-SHA-256$4096:$K:K|\
            SCRAM-SHA-256$4096:c2FsdA==$K:#|SCRAM-SHA-256$4096:c2FsdA==$@@:K|\
            SCRAM-SHA-1$4096:c2FsdA==$K:K|SCRAM-SHA-256$4096:c2FsdA==$K:K$x";
        let bad = bad.replace('K', &k).replace('#', &k31);
        for bad in bad.split('|') {
            assert!(ScramVerifier::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    /// SaltedPassword of the RFC 7677 section 3 vector (PBKDF2 is test-only).
    fn rfc_salted() -> [u8; 32] {
        static SALTED: std::sync::OnceLock<[u8; 32]> = std::sync::OnceLock::new();
        *SALTED.get_or_init(|| {
            let salt_i = [
                &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap()[..],
                &[0, 0, 0, 1],
            ];
            let mut u = hmac_sha256(b"pencil", &salt_i.concat());
            let mut salted = u;
            for _ in 1..4096 {
                u = hmac_sha256(b"pencil", &u);
                salted.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
            }
            salted
        })
    }

    fn rfc7677_server() -> ScramServer {
        let stored_key = B64.encode(Sha256::digest(hmac_sha256(&rfc_salted(), b"Client Key")));
        let server_key = B64.encode(hmac_sha256(&rfc_salted(), b"Server Key"));
        let v = format!("SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${stored_key}:{server_key}");
        ScramServer::with_server_nonce(ScramVerifier::parse(&v).unwrap(), NONCE[20..].into())
    }

    /// A client-final with a valid proof (RFC exchange) over arbitrary attributes.
    fn signed_final(without_proof: &str) -> String {
        let client_key = hmac_sha256(&rfc_salted(), b"Client Key");
        let first = format!("n=user,r=rOprNGfwEbeRWgbNEkqO,r={NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==");
        let auth = format!("{first},i=4096,{without_proof}");
        let sig = hmac_sha256(&Sha256::digest(client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(k, s)| k ^ s).collect();
        format!("{without_proof},p={}", B64.encode(proof))
    }

    #[test]
    fn scram_rfc7677_vector() {
        let mut s = rfc7677_server();
        let expected = format!("r={NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
        assert_eq!(s.handle_client_first(FIRST).unwrap(), expected.as_bytes());
        let cf = format!("c=biws,r={NONCE},{PROOF}");
        assert_eq!(signed_final(&format!("c=biws,r={NONCE}")), cf); // checks the helper
        let fin = s.handle_client_final(cf.as_bytes()).unwrap();
        assert_eq!(fin, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        // Random server nonces: 18 bytes, base64 (24 chars), fresh per exchange.
        let sf = |v| ScramServer::new(v).handle_client_first(FIRST).unwrap();
        let v = ScramVerifier::from_password("x");
        let (a, b) = (sf(v.clone()), sf(v));
        assert!(a != b && a.len() == b.len() && a[2 + 20 + 24] == b',');
    }

    #[test]
    fn scram_rejects_bad_messages() {
        let firsts = "p=tls-server-end-point,,n=,r=a|n,a=x,n=,r=a|n,,m=e,n=,r=a|n,,n=,r=|\
            n,,r=a|x,,n=,r=a||n,,n=,r=a,b";
        let mut firsts: Vec<&[u8]> = firsts.split('|').map(str::as_bytes).collect();
        firsts.push(b"\xff\xfe,,n=,r=abc");
        for bad in firsts {
            let res = rfc7677_server().handle_client_first(bad);
            assert!(res.is_err(), "{bad:?}");
        }
        let mut finals: Vec<Vec<u8>> = [
            signed_final(&format!("c=biws,r={}", NONCE.replace('%', "&"))), // nonce mismatch
            signed_final(&format!("c=eSws,r={NONCE}")),                     // cbind mismatch
            signed_final(&format!("c=biws,r={NONCE},x")),                   // bad extension
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,{PROOF}"),               // client nonce only
            format!("c=biws,r={NONCE},{}", PROOF.replace("dHzb", "dHzc")),  // bad proof
            format!("c=biws,r={NONCE}"),
            format!("c=biws,r={NONCE},p=AAAA"),
            format!("r={NONCE},{PROOF}"),
            format!("c=biws,r={NONCE},,{PROOF}"),
        ]
        .map(String::into_bytes)
        .into();
        finals.push(b"\xff\x00\x80".to_vec());
        finals.extend((0..64).map(|n| (0..n).map(|_| rand::random::<u8>()).collect()));
        for bad in finals {
            let early = rfc7677_server().handle_client_final(&bad);
            assert!(early.is_err(), "final before first");
            let mut s = rfc7677_server();
            s.handle_client_first(FIRST).unwrap();
            assert!(s.handle_client_final(&bad).is_err(), "{bad:?}");
            assert!(s.handle_client_first(FIRST).is_err(), "restart after error");
        }
    }

    #[test]
    fn md5_scheme() {
        let stored = md5_stored("app", "secret");
        assert_eq!(stored, "md56a422f785c9e20873908ce25d1736ae2"); // md5("secretapp")
        let resp = |pw: &str, salt| md5_client_response("app", pw, salt);
        let known = "md5911f527656472583a006e7727877b33e";
        assert_eq!(resp("secret", [1, 2, 3, 4]), known);
        let ok = |pw: &str, s1, s2| md5_verify(&stored, s1, resp(pw, s2).as_bytes());
        let salt = random_md5_salt();
        assert!(ok("secret", salt, salt) && !ok("nope", salt, salt));
        assert!(!ok("secret", [1, 2, 3, 4], [4, 3, 2, 1]));
        assert_eq!(resp("secret", salt), resp(&stored, salt));
        let truncated = &resp("secret", salt)[..34];
        assert!(!md5_verify(&stored, salt, truncated.as_bytes()));
        assert!(!md5_verify("secret", salt, resp("secret", salt).as_bytes()));
    }

    #[test]
    fn cleartext_and_ct_eq() {
        let scram = postgres_protocol::password::scram_sha_256(b"pw");
        assert!(cleartext_verify("u", &scram, b"pw") && !cleartext_verify("u", &scram, b"pW"));
        let md5 = md5_stored("u", "pw");
        assert!(cleartext_verify("u", &md5, b"pw") && !cleartext_verify("v", &md5, b"pw"));
        assert!(cleartext_verify("u", "pw", b"pw") && !cleartext_verify("u", "pw", b"pw2"));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"ab", b"abc"));
    }
}
