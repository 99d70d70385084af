//! Admission: the checks and the move every pull ends with, whatever carried the image
//! (a kiln marketplace, [`crate::client`], or an OCI registry, driven by the CLI through
//! `kiln-fetch`'s artifact layer). The signed metadata is checked against the trust
//! directory, the downloaded file against the metadata, and only then does the entry
//! appear in the catalogue, by [`Catalog::put`]'s atomic rename.

use crate::catalog::{Catalog, Entry, ImageSource};
use crate::metadata::Metadata;
use crate::trust::Trust;
use crate::verify::{verify_image_file, verify_metadata, Verified};
use crate::CatalogError;
use std::path::Path;

/// What a pull did.
#[derive(Debug)]
pub struct Pulled {
    pub entry: Entry,
    pub verified: Verified,
    /// Bytes already on disk from an interrupted pull that were not fetched again.
    pub resumed_from: u64,
    /// The catalogue held the verified image already; nothing was added.
    pub already_present: bool,
}

/// Signed metadata as a transport delivered it, before any check.
#[derive(Debug, Clone, Copy)]
pub struct Offered<'a> {
    /// The metadata's bytes, exactly as signed.
    pub metadata_bytes: &'a [u8],
    /// The detached minisign signature over them.
    pub signature: &'a str,
    /// Where it came from, for error messages (`https://…/ID`, `oci://…`).
    pub origin: &'a str,
}

/// Parses offered metadata and checks its signature, endorser and validity against
/// `trust`: what a pull must pass before it may download or keep the image's bytes.
pub fn check_offer(
    offer: Offered<'_>,
    trust: &Trust,
    allow_expired: bool,
) -> Result<(Metadata, Verified), CatalogError> {
    let metadata = Metadata::parse(offer.metadata_bytes)
        .map_err(|e| CatalogError::Remote(format!("{}: its metadata: {e}", offer.origin)))?;
    let verified = verify_metadata(
        &metadata,
        offer.metadata_bytes,
        offer.signature,
        trust,
        chrono::Utc::now(),
        allow_expired,
    )?;
    Ok((metadata, verified))
}

/// The catalogue's entry for `metadata` when it already holds the image with the right
/// bytes (its metadata refreshed to the offered, verified one when that differs).
pub fn already_held(
    catalog: &Catalog,
    metadata: &Metadata,
    offer: Offered<'_>,
) -> Result<Option<Entry>, CatalogError> {
    let Ok(existing) = catalog.read(&metadata.id) else {
        return Ok(None);
    };
    let Some(image) = &existing.image else {
        return Ok(None);
    };
    if verify_image_file(metadata, image).is_err() {
        return Ok(None);
    }
    if existing.metadata_bytes != offer.metadata_bytes {
        return catalog
            .put(
                metadata,
                offer.metadata_bytes,
                offer.signature,
                ImageSource::None,
            )
            .map(Some);
    }
    Ok(Some(existing))
}

/// Checks the downloaded `file` against verified `metadata` and moves it into the
/// catalogue (it must be on the catalogue's filesystem). A file that does not match is
/// deleted: it is useless for a resume too.
pub fn admit_file(
    catalog: &Catalog,
    metadata: &Metadata,
    offer: Offered<'_>,
    file: &Path,
) -> Result<Entry, CatalogError> {
    if let Err(e) = verify_image_file(metadata, file) {
        let _ = std::fs::remove_file(file);
        return Err(e);
    }
    catalog.put(
        metadata,
        offer.metadata_bytes,
        offer.signature,
        ImageSource::Move(file),
    )
}

/// The whole admission of an image whose metadata, signature and bytes all arrived
/// already (a registry delivers them as one artifact): trust, then bytes, then the entry.
pub fn admit_downloaded(
    catalog: &Catalog,
    offer: Offered<'_>,
    file: &Path,
    trust: &Trust,
    allow_expired: bool,
) -> Result<Pulled, CatalogError> {
    let (metadata, verified) = match check_offer(offer, trust, allow_expired) {
        Ok(checked) => checked,
        Err(e) => {
            let _ = std::fs::remove_file(file);
            return Err(e);
        }
    };
    if let Some(entry) = already_held(catalog, &metadata, offer)? {
        let _ = std::fs::remove_file(file);
        return Ok(Pulled {
            entry,
            verified,
            resumed_from: 0,
            already_present: true,
        });
    }
    let entry = admit_file(catalog, &metadata, offer, file)?;
    Ok(Pulled {
        entry,
        verified,
        resumed_from: 0,
        already_present: false,
    })
}
