//! `sfdisk` (fdisk): writing, reading and verifying a GPT on an image file.

use super::Program;
use crate::ImageError;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

pub(crate) const SFDISK: Program = Program::new("sfdisk", "fdisk");

/// Bytes per sector of every image kiln writes.
pub const SECTOR: u64 = 512;

/// A GUID partition table, as kiln writes it and as [`read_table`] reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptTable {
    /// Disk GUID (`label-id`), upper case.
    pub label_id: String,
    pub partitions: Vec<GptPartition>,
}

/// One GPT entry. Sectors are 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    pub start: u64,
    pub size: u64,
    /// Partition type GUID, upper case.
    pub type_guid: String,
    /// Unique partition GUID (the PARTUUID), upper case.
    pub uuid: String,
    pub name: String,
}

/// Writes `table` to `image` (which must already have its final size) with an `sfdisk`
/// script. Old signatures are left alone: kiln writes into a new, zeroed file.
pub fn write_gpt(image: &Path, table: &GptTable) -> Result<(), ImageError> {
    let script = script(table)?;
    let doing = format!("writing the partition table of {}", image.display());
    let mut cmd = SFDISK.command()?;
    cmd.args(["--quiet", "--no-reread", "--no-tell-kernel", "--lock=no"])
        .args(["--wipe", "never", "--wipe-partitions", "never"])
        .arg(image)
        .stdin(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| SFDISK.spawn_error(&doing, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| SFDISK.spawn_error(&doing, e))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| SFDISK.spawn_error(&doing, e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SFDISK.failure(&doing, &output))
    }
}

/// The `sfdisk` script for `table`.
fn script(table: &GptTable) -> Result<String, ImageError> {
    let mut s = format!(
        "label: gpt\nlabel-id: {}\nunit: sectors\nfirst-lba: 2048\n\n",
        table.label_id
    );
    for p in &table.partitions {
        if p.name.contains(['"', '\n', ',']) {
            return Err(ImageError::Tool(format!(
                "partition name `{}` cannot contain quotes, commas or newlines",
                p.name
            )));
        }
        s.push_str(&format!(
            "start={}, size={}, type={}, uuid={}, name=\"{}\"\n",
            p.start, p.size, p.type_guid, p.uuid, p.name
        ));
    }
    Ok(s)
}

/// `sfdisk --verify`. It exits 0 even when it falls back to the backup table or finds
/// the protective MBR's size wrong, so any warning on stderr is a failure too.
pub fn verify(image: &Path) -> Result<(), ImageError> {
    let doing = format!("verifying the partition table of {}", image.display());
    let mut cmd = SFDISK.command()?;
    cmd.args(["--verify", "--lock=no"]).arg(image);
    let output = SFDISK.run(&mut cmd, &doing)?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stdout.contains("No errors detected") && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!(
            "{doing}: sfdisk found problems:\n{}\n{}",
            stderr.trim(),
            stdout.trim()
        )))
    }
}

/// Reads the GPT of `image` back (`sfdisk --json`).
pub fn read_table(image: &Path) -> Result<GptTable, ImageError> {
    let doing = format!("reading the partition table of {}", image.display());
    let mut cmd = SFDISK.command()?;
    cmd.args(["--json", "--lock=no"]).arg(image);
    let output = SFDISK.run(&mut cmd, &doing)?;
    let bad = |why: &str| ImageError::Tool(format!("{doing}: {why}"));
    let json: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| bad(&e.to_string()))?;
    let table = &json["partitiontable"];
    if table["label"] != "gpt" {
        return Err(bad("the image has no GPT"));
    }
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_ascii_uppercase();
    let partitions = table["partitions"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| GptPartition {
                    start: p["start"].as_u64().unwrap_or_default(),
                    size: p["size"].as_u64().unwrap_or_default(),
                    type_guid: text(&p["type"]),
                    uuid: text(&p["uuid"]),
                    name: p["name"].as_str().unwrap_or_default().to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(GptTable {
        label_id: text(&table["id"]),
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lists_every_partition() {
        let table = GptTable {
            label_id: "A".into(),
            partitions: vec![GptPartition {
                start: 2048,
                size: 4096,
                type_guid: "T".into(),
                uuid: "U".into(),
                name: "root".into(),
            }],
        };
        let s = script(&table).unwrap();
        assert!(s.starts_with("label: gpt\nlabel-id: A\n"), "{s}");
        assert!(
            s.contains("start=2048, size=4096, type=T, uuid=U, name=\"root\"\n"),
            "{s}"
        );
    }

    #[test]
    fn quotes_in_names_are_refused() {
        let mut table = GptTable {
            label_id: "A".into(),
            partitions: vec![],
        };
        table.partitions.push(GptPartition {
            start: 1,
            size: 1,
            type_guid: "T".into(),
            uuid: "U".into(),
            name: "a\"b".into(),
        });
        assert!(script(&table).is_err());
    }
}
