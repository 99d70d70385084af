//! `(appliance …)`: what `kiln appliance` makes of the spec's result.

use super::{Fields, Form, APPLIANCE_FIELDS};
use crate::{ApplianceSpec, SpecError};

/// Compressions an appliance's initrd may have.
const COMPRESSIONS: &[&str] = &["zstd", "gzip", "none"];

/// Parses `(appliance (train CMD…) (run CMD) (prerun CMDS) (postrun CMDS)
/// (include GLOB…) (exclude GLOB…) (compress zstd|gzip|none))`; `run` is required.
pub(super) fn appliance(form: Form) -> Result<ApplianceSpec, SpecError> {
    let fields = Fields::of("`appliance`".into(), form.pos, form.args, APPLIANCE_FIELDS)?;
    let texts = |name: &str, usage: &str| -> Result<Vec<String>, SpecError> {
        match fields.get(name) {
            Some(f) => Ok(f
                .some_atoms(usage)?
                .into_iter()
                .map(|a| a.text.clone())
                .collect()),
            None => Ok(Vec::new()),
        }
    };
    let text = |name: &str, usage: &str| -> Result<Option<String>, SpecError> {
        Ok(fields.atom(name, usage)?.map(|a| a.text.clone()))
    };
    let run = fields.require("run", "(run \"/usr/bin/PROGRAM ARGS\")")?;
    let run = run.atom("(run \"/usr/bin/PROGRAM ARGS\")")?;
    if run.text.trim().is_empty() {
        return Err(SpecError::new(
            run.pos,
            "`run` is empty: give the command the appliance runs",
        ));
    }
    let compress = match fields.atom("compress", "(compress zstd)")? {
        Some(a) if !COMPRESSIONS.contains(&a.text.as_str()) => {
            return Err(SpecError::new(
                a.pos,
                format!("unknown compression `{}`: use zstd, gzip or none", a.text),
            ))
        }
        a => a.map(|a| a.text.clone()),
    };
    Ok(ApplianceSpec {
        train: texts("train", "(train \"COMMAND\"…)")?,
        run: run.text.clone(),
        prerun: text("prerun", "(prerun \"COMMANDS\")")?,
        postrun: text("postrun", "(postrun \"COMMANDS\")")?,
        include: texts("include", "(include GLOB…)")?,
        exclude: texts("exclude", "(exclude GLOB…)")?,
        compress,
    })
}
