//! `(image …)`: a whole-disk image of several OS partitions and its descriptor.

use super::{backquoted, child_build, Fields, Form, IMAGE_FIELDS, PARTITION_FIELDS};
use crate::sexp::Atom;
use crate::validate::{self, suggest, MAX_LABEL_LEN};
use crate::{ChildBuild, ImageSpec, Located, PartitionSource, PartitionSpec, SpecError};

/// Parses `(image (partition …)… (default NAME) (node-types T…) (arch A…))`;
/// `builds` are the child builds a partition may come from.
pub(super) fn image(form: Form, builds: &[Located<ChildBuild>]) -> Result<ImageSpec, SpecError> {
    let mut fields = Fields::new("`image`".into(), form.pos);
    let mut image = ImageSpec::default();
    let mut default = None;
    for arg in form.args {
        let item = Form::of(arg, "`image`")?;
        if item.name() == "partition" {
            let partition = partition(item, builds, &image.partitions)?;
            image.partitions.push(Located::new(partition, item.pos));
            continue;
        }
        fields.add(item, IMAGE_FIELDS)?;
        match item.name() {
            "default" => default = Some(item.atom("(default NAME)")?),
            "node-types" => {
                image.node_types = distinct_atoms(item, "node type", "(node-types pc3000)", |a| {
                    validate::identifier("node type", a)
                })?
            }
            // `arch`: `fields.add` lets only `IMAGE_FIELDS` through.
            _ => {
                image.arches =
                    distinct_atoms(item, "architecture", "(arch amd64)", validate::debian_arch)?
            }
        }
    }
    if image.partitions.is_empty() {
        return Err(SpecError::new(
            form.pos,
            "`image` has no partitions: add one, e.g. `(partition (name root) (build NAME))`",
        ));
    }
    if let Some(atom) = default {
        default_partition(atom, &image)?;
        image.default = Some(atom.text.clone());
    }
    Ok(image)
}

/// `(node-types …)` or `(arch …)`: at least one atom, each valid and listed once.
fn distinct_atoms(
    item: Form,
    what: &str,
    usage: &str,
    check: impl Fn(&Atom) -> Result<(), SpecError>,
) -> Result<Vec<String>, SpecError> {
    let atoms = item.some_atoms(usage)?;
    let mut values: Vec<String> = Vec::with_capacity(atoms.len());
    for atom in atoms {
        check(atom)?;
        if values.contains(&atom.text) {
            return Err(SpecError::new(
                atom.pos,
                format!(
                    "duplicate {what} `{}` in `{}`: list each once",
                    atom.text,
                    item.name()
                ),
            ));
        }
        values.push(atom.text.clone());
    }
    Ok(values)
}

/// `(default NAME)` must name one of the image's partitions.
fn default_partition(atom: &Atom, image: &ImageSpec) -> Result<(), SpecError> {
    let names: Vec<&str> = image
        .partitions
        .iter()
        .map(|p| p.value.name.as_str())
        .collect();
    if names.contains(&atom.text.as_str()) {
        return Ok(());
    }
    Err(SpecError::new(
        atom.pos,
        format!(
            "`default` names unknown partition `{}`: the partitions are {}",
            atom.text,
            backquoted(names.iter().copied())
        ),
    )
    .with_suggestion(suggest(&atom.text, names)))
}

/// One `(partition …)`; `earlier` are the partitions before it, for uniqueness.
fn partition(
    form: Form,
    builds: &[Located<ChildBuild>],
    earlier: &[Located<PartitionSpec>],
) -> Result<PartitionSpec, SpecError> {
    let fields = Fields::of("`partition`".into(), form.pos, form.args, PARTITION_FIELDS)?;
    let name = fields.require("name", "(name NAME)")?.atom("(name NAME)")?;
    validate::identifier("partition name", name)?;
    if let Some(first) = earlier.iter().find(|p| p.value.name == name.text) {
        return Err(SpecError::new(
            name.pos,
            format!(
                "duplicate partition name `{}` (the first is at {}): rename one of them",
                name.text, first.pos
            ),
        ));
    }
    let source = source(&fields, name, builds)?;
    let size = fields
        .atom("size", "(size 2G)")?
        .map(validate::partition_size)
        .transpose()?;
    let label = fields.atom("label", "(label ROOT)")?;
    match label {
        Some(label) => validate::partition_label(label)?,
        None => name_fits_label(name)?,
    }
    let effective = label.unwrap_or(name);
    if let Some(other) = earlier
        .iter()
        .find(|p| p.value.effective_label() == effective.text)
    {
        return Err(SpecError::new(
            effective.pos,
            format!(
                "partition `{}` would have the label `{}` of partition `{}` (at {}): give each partition its own `(label …)`",
                name.text, effective.text, other.value.name, other.pos
            ),
        ));
    }
    Ok(PartitionSpec {
        name: name.text.clone(),
        source,
        size,
        label: label.map(|l| l.text.clone()),
    })
}

/// Without a `label`, the name becomes the label, so it must fit in one.
fn name_fits_label(name: &Atom) -> Result<(), SpecError> {
    if name.text.len() <= MAX_LABEL_LEN {
        return Ok(());
    }
    Err(SpecError::new(
        name.pos,
        format!(
            "partition name `{}` has {} characters, too many for its default ext4 label (at most {MAX_LABEL_LEN}): add a shorter `(label …)`",
            name.text,
            name.text.len()
        ),
    ))
}

/// Exactly one of `(build NAME)` and `(spec PATH)`.
fn source(
    fields: &Fields,
    name: &Atom,
    builds: &[Located<ChildBuild>],
) -> Result<PartitionSource, SpecError> {
    let partition = &name.text;
    match (fields.get("build"), fields.get("spec")) {
        (Some(build), Some(spec)) => Err(SpecError::new(
            build.pos.max(spec.pos),
            format!(
                "partition `{partition}` has both `build` and `spec`: a partition comes from one source; delete one"
            ),
        )),
        (None, None) => Err(SpecError::new(
            fields.pos,
            format!(
                "partition `{partition}` has no source: add `(build NAME)` to use a child build of this spec or `(spec PATH)` to use another spec file"
            ),
        )),
        (Some(build), None) => {
            let build = build.atom("(build NAME)")?;
            child_build(&format!("partition `{partition}` uses"), build, builds)?;
            Ok(PartitionSource::Build(build.text.clone()))
        }
        (None, Some(spec)) => {
            let path = spec.atom("(spec PATH)")?;
            validate::partition_spec_path(path)?;
            Ok(PartitionSource::Spec(path.text.clone()))
        }
    }
}
