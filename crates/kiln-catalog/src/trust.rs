//! The trust directory: the public keys (minisign `.pub` files) of the endorsers whose
//! signatures are accepted. A key file whose name (before `.pub`) is an e-mail address
//! (`me@lab.org.pub`) vouches for that endorser only: metadata naming another e-mail with
//! that key is refused. Any other name (`lab.pub`) trusts the key for whatever e-mail the
//! metadata gives.

use crate::metadata::Metadata;
use crate::sign::{key_id, load_public, signature_key_id, verify};
use crate::CatalogError;
use minisign::PublicKey;
use std::fs;
use std::path::{Path, PathBuf};

/// One trusted key.
pub struct TrustedKey {
    pub key_id: String,
    pub public: PublicKey,
    /// The e-mail this key is bound to, from its file name.
    pub email: Option<String>,
    pub path: PathBuf,
}

/// The keys of a trust directory.
pub struct Trust {
    pub dir: PathBuf,
    pub keys: Vec<TrustedKey>,
}

impl Trust {
    /// Reads every `*.pub` file of `dir`. A file that is not a public key is an error
    /// (naming it) rather than silently ignored: a typo must not shrink the trust set
    /// unnoticed.
    pub fn load(dir: &Path) -> Result<Trust, CatalogError> {
        let entries = fs::read_dir(dir).map_err(|e| {
            CatalogError::Trust(format!(
                "reading the trust directory {}: {e}; put the endorsers' public keys \
                 (minisign .pub files) there",
                dir.display()
            ))
        })?;
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CatalogError::io(dir, e))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            let Some(stem) = name.strip_suffix(".pub") else {
                continue;
            };
            let text = fs::read_to_string(&path).map_err(|e| CatalogError::io(&path, e))?;
            let public = load_public(&text).map_err(|e| {
                CatalogError::Trust(format!(
                    "{}: not a minisign public key: {e}",
                    path.display()
                ))
            })?;
            keys.push(TrustedKey {
                key_id: key_id(public.keynum()),
                public,
                email: stem.contains('@').then(|| stem.to_string()),
                path,
            });
        }
        keys.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Trust {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    /// Checks that `signature` over `metadata_bytes` was made by a trusted key that is the
    /// endorser `metadata` names, and that the key may speak for that e-mail. Returns the
    /// key that verified it.
    pub fn check(
        &self,
        metadata: &Metadata,
        metadata_bytes: &[u8],
        signature: &str,
    ) -> Result<&TrustedKey, CatalogError> {
        let signer = signature_key_id(signature)?;
        if signer != metadata.endorser.key_id {
            return Err(CatalogError::Endorser(format!(
                "the signature is by key {signer}, but the metadata names {} (key {}) as \
                 its endorser",
                metadata.endorser.email, metadata.endorser.key_id
            )));
        }
        let key = self
            .keys
            .iter()
            .find(|k| k.key_id == signer)
            .ok_or_else(|| {
                CatalogError::Endorser(format!(
                    "endorser {} (key {signer}) is not trusted: no key with that id in {}; \
                     add their public key there if you trust them",
                    metadata.endorser.email,
                    self.dir.display()
                ))
            })?;
        if let Some(email) = &key.email {
            if !email.eq_ignore_ascii_case(&metadata.endorser.email) {
                return Err(CatalogError::Endorser(format!(
                    "key {signer} is trusted for {email} ({}), not for {}",
                    key.path.display(),
                    metadata.endorser.email
                )));
            }
        }
        verify(&key.public, metadata_bytes, signature).map_err(|e| {
            CatalogError::Signature(format!(
                "the metadata's signature does not verify with {}'s key {signer} ({e}): \
                 the metadata or its signature was changed after signing",
                metadata.endorser.email
            ))
        })?;
        Ok(key)
    }

    /// The trusted key with this id.
    pub fn key(&self, key_id: &str) -> Option<&TrustedKey> {
        self.keys.iter().find(|k| k.key_id == key_id)
    }
}
