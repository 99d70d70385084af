//! `kiln ls`, `delete`, `prune`, `clean`, `healthcheck`.

use crate::cli::{CleanArgs, DeleteArgs, JsonArg, LsArgs, PruneArgs};
use crate::layers::resolve_id;
use crate::size::human;
use kiln_store::{FsStore, LayerId, Store};
use std::path::Path;
use std::process::ExitCode;

pub fn ls(store_dir: &Path, args: LsArgs) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    let mut layers = store.list()?;
    layers.sort_by(|a, b| {
        b.last_used
            .cmp(&a.last_used)
            .then(a.meta.id.cmp(&b.meta.id))
    });
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&layers)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<12}  {:<12}  {:>10}  {:>8}  {:<19}  DESCRIPTION",
        "ID", "PARENT", "SIZE", "CHILDREN", "LAST USED"
    );
    for l in &layers {
        let parent = l
            .meta
            .parent
            .as_ref()
            .map(|p| p.short().to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<12}  {:<12}  {:>10}  {:>8}  {:<19}  {}",
            l.meta.id.short(),
            parent,
            human(l.size),
            l.children,
            timestamp(l.last_used),
            one_line(&l.meta.description)
        );
    }
    let total: u64 = layers.iter().map(|l| l.size).sum();
    println!("{} layers, {}", layers.len(), human(total));
    Ok(ExitCode::SUCCESS)
}

pub fn delete(store_dir: &Path, args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    let id = resolve_id(&store, &args.id)?;
    let deleted = store.delete(&id)?;
    report_deleted(&deleted, args.json.json);
    Ok(ExitCode::SUCCESS)
}

pub fn prune(store_dir: &Path, args: PruneArgs) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    let deleted = store.prune(args.keep_bytes)?;
    report_deleted(&deleted, args.json.json);
    Ok(ExitCode::SUCCESS)
}

pub fn clean(store_dir: &Path, args: CleanArgs) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    store.clean(args.all)?;
    println!(
        "store {} is empty{}",
        store_dir.display(),
        if args.all {
            ""
        } else {
            " (the .deb cache is kept; --all removes it)"
        }
    );
    Ok(ExitCode::SUCCESS)
}

pub fn healthcheck(store_dir: &Path, args: JsonArg) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    let problems = store.healthcheck()?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "store": store_dir, "healthy": problems.is_empty(), "problems": problems })
        );
    } else if problems.is_empty() {
        println!("store {} is healthy", store_dir.display());
    } else {
        for p in &problems {
            println!("problem: {p}");
        }
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn report_deleted(deleted: &[LayerId], json: bool) {
    if json {
        let ids: Vec<&str> = deleted.iter().map(|d| d.as_str()).collect();
        println!("{}", serde_json::json!({ "deleted": ids }));
    } else {
        for id in deleted {
            println!("deleted {id}");
        }
        println!("{} layers deleted", deleted.len());
    }
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or("");
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(59).collect::<String>())
    } else {
        line.to_string()
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` UTC.
fn timestamp(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps() {
        assert_eq!(super::timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(super::timestamp(1_795_000_000), "2026-11-18 11:06:40");
    }
}
