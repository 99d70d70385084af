//! The checks an image passes before kiln trusts it: the endorser's signature over the
//! metadata (by a key of the trust directory, for that endorser), the validity period,
//! and the image's size and digests against the metadata. Deprecation is a warning.

use crate::metadata::{Metadata, Validity};
use crate::trust::Trust;
use crate::CatalogError;
use chrono::{DateTime, Utc};
use std::path::Path;

/// What passed, and what the user should know.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verified {
    pub id: String,
    pub endorser: String,
    pub key_id: String,
    /// The trust file that holds the endorser's key.
    pub trusted_by: String,
    pub validity: Validity,
    pub warnings: Vec<String>,
}

/// Checks signature, endorser and validity of metadata (not the image bytes).
pub fn verify_metadata(
    metadata: &Metadata,
    metadata_bytes: &[u8],
    signature: &str,
    trust: &Trust,
    now: DateTime<Utc>,
    allow_expired: bool,
) -> Result<Verified, CatalogError> {
    let key = trust.check(metadata, metadata_bytes, signature)?;
    let mut warnings = Vec::new();
    if metadata.is_expired(now) {
        if !allow_expired {
            return Err(CatalogError::Expired(format!(
                "image {} ({}) was endorsed until {}; --allow-expired accepts it anyway",
                metadata.short_id, metadata.title, metadata.valid_until
            )));
        }
        warnings.push(format!(
            "the endorsement expired at {} (accepted: --allow-expired)",
            metadata.valid_until
        ));
    }
    if let Some(d) = &metadata.deprecated {
        warnings.push(format!(
            "image {} is deprecated since {}: {}",
            metadata.short_id, d.at, d.reason
        ));
    }
    Ok(Verified {
        id: metadata.id.clone(),
        endorser: metadata.endorser.email.clone(),
        key_id: key.key_id.clone(),
        trusted_by: key.path.display().to_string(),
        validity: metadata.validity(now),
        warnings,
    })
}

/// Checks that `image` has the size and the SHA-256 and SHA-512 digests `metadata` gives.
pub fn verify_image_file(metadata: &Metadata, image: &Path) -> Result<(), CatalogError> {
    let len = std::fs::metadata(image)
        .map_err(|e| CatalogError::io(image, e))?
        .len();
    if len != metadata.bytes {
        return Err(CatalogError::Checksum(format!(
            "{} is {len} bytes, the metadata of {} says {}",
            image.display(),
            metadata.short_id,
            metadata.bytes
        )));
    }
    let digests =
        kiln_image::manifest::hash_file(image).map_err(|e| CatalogError::Image(e.to_string()))?;
    if digests.sha256 != metadata.checksums.sha256 || digests.sha512 != metadata.checksums.sha512 {
        return Err(CatalogError::Checksum(format!(
            "{} has sha256 {}, the metadata says {}: the image was changed or damaged",
            image.display(),
            digests.sha256,
            metadata.checksums.sha256
        )));
    }
    Ok(())
}
