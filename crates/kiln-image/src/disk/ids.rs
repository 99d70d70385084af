//! Identifiers derived from the image id, so that the same image id gives the same
//! disk: every UUID, the ext4 hash seeds and the FAT volume id.

use sha2::{Digest, Sha256};

/// Derives identifiers for one image from its seed (the image id).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ids<'a> {
    seed: &'a str,
}

impl<'a> Ids<'a> {
    pub(crate) fn new(seed: &'a str) -> Self {
        Ids { seed }
    }

    /// 32 bytes that depend only on the seed and `purpose`.
    fn digest(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"kiln disk id\0");
        h.update(self.seed.as_bytes());
        h.update(b"\0");
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// A random-looking RFC 4122 version 4 UUID, lower case (`/dev/disk/by-uuid` style).
    pub(crate) fn uuid(&self, purpose: &str) -> String {
        let mut b = self.digest(purpose);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex = hex::encode(&b[..16]);
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }

    /// A 32-bit FAT volume id.
    pub(crate) fn volume_id(&self, purpose: &str) -> u32 {
        let b = self.digest(purpose);
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    pub(crate) fn disk_guid(&self) -> String {
        self.uuid("disk guid")
    }

    pub(crate) fn esp_partuuid(&self) -> String {
        self.uuid("esp partuuid")
    }

    pub(crate) fn esp_volume_id(&self) -> u32 {
        self.volume_id("esp volume id")
    }

    /// Ids of the partition named `name` (names are unique within an image, and naming
    /// by name keeps a partition's ids when others are added or reordered).
    pub(crate) fn partition(&self, name: &str) -> PartitionIds {
        PartitionIds {
            partuuid: self.uuid(&format!("partition {name} partuuid")),
            fs_uuid: self.uuid(&format!("partition {name} fs uuid")),
            hash_seed: self.uuid(&format!("partition {name} hash seed")),
        }
    }
}

/// The identifiers of one ext4 partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PartitionIds {
    pub partuuid: String,
    pub fs_uuid: String,
    pub hash_seed: String,
}

/// `XXXX-XXXX`: how blkid, fstab and udev write a FAT volume id.
pub(crate) fn fat_uuid(volume_id: u32) -> String {
    format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_stable() {
        let ids = Ids::new("image-1");
        let u = ids.disk_guid();
        assert_eq!(u, Ids::new("image-1").disk_guid());
        assert_ne!(u, Ids::new("image-2").disk_guid());
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
        let p = ids.partition("root");
        assert_ne!(p.partuuid, p.fs_uuid);
        assert_ne!(p.fs_uuid, p.hash_seed);
        assert_ne!(p, ids.partition("data"));
    }

    #[test]
    fn fat_uuid_format() {
        assert_eq!(fat_uuid(0x5EEDF00D), "5EED-F00D");
        assert_eq!(fat_uuid(0x1), "0000-0001");
    }
}
