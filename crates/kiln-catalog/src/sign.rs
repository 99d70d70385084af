//! Keys and signatures in minisign's formats (through the `minisign` crate): key pairs,
//! detached prehashed Ed25519 signatures over canonical metadata, and their verification.
//! The stock `minisign -V -p KEY.pub -m metadata.json` checks what kiln signs.

use crate::CatalogError;
use minisign::{KeyPair, PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};
use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

/// Environment variable holding the password of an encrypted secret key (an empty or
/// unset variable means the key is not encrypted).
pub const PASSWORD_ENV: &str = "KILN_KEY_PASSWORD";

/// A secret key with its public half and id.
pub struct SigningKey {
    pub secret: SecretKey,
    pub public: PublicKey,
    /// 16 uppercase hex digits, as minisign prints it.
    pub key_id: String,
}

/// The id of a key as minisign prints it: the 8-byte key number, little-endian, in hex.
pub fn key_id(keynum: &[u8]) -> String {
    let mut n = [0u8; 8];
    n.copy_from_slice(&keynum[..8]);
    format!("{:016X}", u64::from_le_bytes(n))
}

/// The public key file written next to secret key `key`: `me.key` → `me.pub`, any other
/// name gets `.pub` appended.
pub fn public_key_path(key: &Path) -> PathBuf {
    if key.extension().is_some_and(|e| e == "key") {
        key.with_extension("pub")
    } else {
        let mut s = key.as_os_str().to_os_string();
        s.push(".pub");
        PathBuf::from(s)
    }
}

/// Generates a key pair, writing the secret key to `key` (mode 600, refusing to replace
/// an existing file) and the public key to [`public_key_path`]. An empty `password`
/// leaves the secret key unencrypted.
pub fn generate(key: &Path, password: &str, comment: &str) -> Result<SigningKey, CatalogError> {
    let pub_path = public_key_path(key);
    for path in [key, pub_path.as_path()] {
        if path.symlink_metadata().is_ok() {
            return Err(CatalogError::Usage(format!(
                "{} exists: kiln does not overwrite a key; remove it or choose another name",
                path.display()
            )));
        }
    }
    let KeyPair { pk, sk } = KeyPair::generate_encrypted_keypair(Some(password.to_string()))
        .map_err(|e| CatalogError::Key(format!("generating a key pair: {e}")))?;
    let id = key_id(pk.keynum());
    let sk_text = sk
        .to_box(Some(&format!("kiln secret key {id} {comment}")))
        .map_err(|e| CatalogError::Key(e.to_string()))?
        .to_string();
    let pk_text = pk
        .to_box()
        .map_err(|e| CatalogError::Key(e.to_string()))?
        .to_string();
    let pk_text = replace_comment(&pk_text, &format!("minisign public key {id} {comment}"));
    write_new(key, sk_text.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&pub_path, pk_text.as_bytes(), 0o644) {
        let _ = fs::remove_file(key);
        return Err(e);
    }
    Ok(SigningKey {
        secret: sk,
        public: pk,
        key_id: id,
    })
}

/// Reads a secret key file (minisign's format) and derives its public half.
pub fn load_secret(key: &Path, password: &str) -> Result<SigningKey, CatalogError> {
    let text = fs::read_to_string(key).map_err(|e| CatalogError::io(key, e))?;
    let secret = if let Some(bytes) = unencrypted_key_bytes(&text) {
        // `minisign -G -W` writes KDF "none"; the crate reads only scrypt-protected keys
        // (its checksum check fails on these), so the raw key is taken as it is and
        // checked below by a signature round trip.
        SecretKey::from_bytes(&bytes).map_err(|e| e.to_string())
    } else {
        SecretKeyBox::from_string(&text)
            .and_then(|b| b.into_secret_key(Some(password.to_string())))
            .map_err(|e| e.to_string())
    }
    .map_err(|e| {
        CatalogError::Key(format!(
            "{}: not a usable minisign secret key ({e}); an encrypted key needs its \
                 password in ${PASSWORD_ENV}",
            key.display()
        ))
    })?;
    let public = PublicKey::from_secret_key(&secret)
        .map_err(|e| CatalogError::Key(format!("{}: {e}", key.display())))?;
    let key_id = key_id(public.keynum());
    let loaded = SigningKey {
        secret,
        public,
        key_id,
    };
    // A damaged key (or a wrong password the checksum missed) signs what its public half
    // does not verify: find out now rather than at the marketplace.
    let probe = sign(&loaded, b"kiln key probe", "probe")
        .map_err(|e| CatalogError::Key(format!("{}: {e}", key.display())))?;
    verify(&loaded.public, b"kiln key probe", &probe).map_err(|_| {
        CatalogError::Key(format!(
            "{}: the key does not verify its own signature (damaged, or a wrong password)",
            key.display()
        ))
    })?;
    Ok(loaded)
}

/// The raw bytes of a secret key file whose key is stored without a KDF (KDF id `\0\0`).
fn unencrypted_key_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let line = text.lines().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    (bytes.len() > 4 && bytes[2..4] == [0, 0]).then_some(bytes)
}

/// Reads a public key: a minisign `.pub` file (comment line + key) or a bare base64 key.
pub fn load_public(text: &str) -> Result<PublicKey, String> {
    let trimmed = text.trim();
    if trimmed.lines().count() == 1 {
        PublicKey::from_base64(trimmed).map_err(|e| e.to_string())
    } else {
        PublicKeyBox::from_string(text)
            .and_then(|b| b.into_public_key())
            .map_err(|e| e.to_string())
    }
}

/// The password for secret keys, from [`PASSWORD_ENV`].
pub fn password_from_env() -> String {
    std::env::var(PASSWORD_ENV).unwrap_or_default()
}

/// Signs `data` (prehashed), with `trusted_comment` bound into the signature.
pub fn sign(key: &SigningKey, data: &[u8], trusted_comment: &str) -> Result<String, CatalogError> {
    let sig = minisign::sign(
        Some(&key.public),
        &key.secret,
        Cursor::new(data),
        Some(trusted_comment),
        Some(&format!("signature from kiln key {}", key.key_id)),
    )
    .map_err(|e| CatalogError::Key(format!("signing: {e}")))?;
    Ok(sig.into_string())
}

/// A signature's key id, read without verifying it.
pub fn signature_key_id(signature: &str) -> Result<String, CatalogError> {
    let sig = SignatureBox::from_string(signature)
        .map_err(|e| CatalogError::Signature(format!("not a minisign signature: {e}")))?;
    Ok(key_id(sig.keynum()))
}

/// Verifies a detached signature of `data` by `public`; returns its trusted comment.
/// Only prehashed signatures (minisign's default since 0.8) are accepted.
pub fn verify(public: &PublicKey, data: &[u8], signature: &str) -> Result<String, CatalogError> {
    let sig = SignatureBox::from_string(signature)
        .map_err(|e| CatalogError::Signature(format!("not a minisign signature: {e}")))?;
    minisign::verify(public, &sig, Cursor::new(data), true, false, false)
        .map_err(|e| CatalogError::Signature(e.to_string()))?;
    sig.trusted_comment()
        .map_err(|e| CatalogError::Signature(e.to_string()))
}

fn replace_comment(boxed: &str, comment: &str) -> String {
    let mut lines = boxed.lines();
    lines.next();
    let mut out = format!("untrusted comment: {comment}\n");
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Creates `path` (failing when it exists) with `mode`, writes `data` and syncs it.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CatalogError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| CatalogError::io(path, e))?;
    file.write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(|e| CatalogError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("me.key");
        let made = generate(&key, "", "test").unwrap();
        assert!(dir.path().join("me.pub").exists());
        assert!(generate(&key, "", "again").is_err(), "overwrote a key");
        let loaded = load_secret(&key, "").unwrap();
        assert_eq!(loaded.key_id, made.key_id);
        let sig = sign(&loaded, b"hello\n", "kiln test").unwrap();
        assert_eq!(signature_key_id(&sig).unwrap(), made.key_id);
        let public = load_public(&fs::read_to_string(dir.path().join("me.pub")).unwrap()).unwrap();
        assert_eq!(verify(&public, b"hello\n", &sig).unwrap(), "kiln test");
        assert!(verify(&public, b"hellp\n", &sig).is_err());
        let other = generate(&dir.path().join("o.key"), "", "o").unwrap();
        assert!(verify(&other.public, b"hello\n", &sig).is_err());
    }
}
