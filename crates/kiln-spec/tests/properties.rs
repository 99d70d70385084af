//! Property tests: random specs round-trip through print/parse, and random or
//! mutated text never panics the parser. The second half is the stable-toolchain
//! twin of `fuzz/fuzz_targets/parse.rs`, so `cargo test` exercises it too.

use kiln_spec::{
    comments, parse, print, print_with_comments, Bootstrap, Check, CheckKind, ChildBuild, Copy,
    CopyFrom, ImageSpec, Located, Mount, Op, PartitionSource, PartitionSpec, Pos, Run, SandboxKind,
    Spec, TestSpec, User, DEBIAN_ARCHES,
};
use proptest::prelude::*;
use proptest::test_runner::Config;
use std::fs;
use std::path::Path;
use std::sync::OnceLock;

fn at<T>(value: T) -> Located<T> {
    Located::new(value, Pos::default())
}

/// Any text an atom may hold: plain words, printable ASCII, anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_./:@-]{0,12}",
        "[ -~]{0,24}",
        "[\"\\\\#|;() \n\t\r\u{8}\u{1}\u{7f}a-c]{0,12}",
        any::<String>(),
    ]
}

fn non_empty_text() -> impl Strategy<Value = String> {
    text().prop_filter("must not be empty", |s| !s.is_empty())
}

fn copy_source() -> impl Strategy<Value = String> {
    text().prop_filter("no `..` component", |s| !s.split('/').any(|c| c == ".."))
}

fn mount() -> impl Strategy<Value = Mount> {
    let options = prop::collection::vec((text(), text()), 0..3);
    (non_empty_text(), non_empty_text(), options).prop_map(|(id, target, buildkit_options)| Mount {
        id,
        target,
        buildkit_options,
    })
}

fn user() -> impl Strategy<Value = User> {
    prop_oneof![
        (0..=u32::MAX - 1, 0..=u32::MAX - 1).prop_map(|(uid, gid)| User::Unix { uid, gid }),
        text().prop_map(User::Name),
    ]
}

fn run() -> impl Strategy<Value = Run> {
    (
        prop::collection::vec(mount(), 0..3),
        prop_oneof![
            Just(vec![]),
            Just(vec!["host".to_string()]),
            prop::collection::vec(text(), 0..3)
        ],
        prop::collection::vec(mount(), 0..3),
        text(),
    )
        .prop_map(|(cache, network, secrets, shell)| Run {
            cache,
            network,
            secrets,
            shell,
        })
}

fn copy(builds: Vec<String>) -> impl Strategy<Value = Copy> {
    let from = if builds.is_empty() {
        Just(CopyFrom::Context).boxed()
    } else {
        prop_oneof![
            Just(CopyFrom::Context),
            prop::sample::select(builds).prop_map(CopyFrom::Build)
        ]
        .boxed()
    };
    (
        from,
        prop::collection::vec(copy_source(), 1..4),
        text(),
        prop::collection::vec(text(), 0..3),
    )
        .prop_map(|(from, src, mut dst, exclude)| {
            if src.len() > 1 && !dst.ends_with('/') {
                dst.push('/');
            }
            Copy {
                from,
                src,
                dst,
                exclude,
            }
        })
}

fn op(builds: Vec<String>) -> impl Strategy<Value = Op> {
    prop_oneof![
        text().prop_map(Op::Comment),
        text().prop_map(Op::Workdir),
        prop::collection::vec(text(), 1..4).prop_map(Op::Shell),
        run().prop_map(Op::Run),
        copy(builds).prop_map(Op::Copy),
        user().prop_map(Op::User),
        ("[A-Za-z_][A-Za-z0-9_]{0,8}", text()).prop_map(|(n, v)| Op::Env(n, v)),
    ]
}

fn bootstrap() -> impl Strategy<Value = Option<Bootstrap>> {
    let variant = prop::option::of(prop::sample::select(vec![
        "minbase",
        "apt",
        "essential",
        "standard",
    ]));
    let fields = (
        variant,
        prop::collection::vec(text(), 0..3),
        prop::collection::vec("[a-z][a-z0-9._-]{0,8}(/[a-z0-9_-]{1,8}){0,2}", 0..3),
        prop::option::of(text()),
        prop::option::of(text()),
    )
        .prop_map(|(variant, include, skeleton, mirror, arch)| Bootstrap {
            variant: variant.map(str::to_string),
            include,
            skeleton,
            mirror,
            arch,
        });
    prop::option::of(fields)
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![Just(1u16), Just(u16::MAX), 1..=u16::MAX]
}

fn check() -> impl Strategy<Value = Check> {
    let kind = prop_oneof![
        non_empty_text().prop_map(|expect| CheckKind::Console { expect }),
        port().prop_map(|port| CheckKind::Port { port }),
        (
            port(),
            "/[!-~é✓]{0,16}",
            prop_oneof![Just(200u16), 100..=599u16],
            prop::option::of(non_empty_text())
        )
            .prop_map(|(port, path, status, body)| CheckKind::Http {
                port,
                path,
                status,
                body
            }),
        (port(), text(), non_empty_text()).prop_map(|(port, send, expect)| CheckKind::Tcp {
            port,
            send,
            expect
        }),
    ];
    let timeout = prop_oneof![Just(60u32), Just(1), Just(u32::MAX), 1..=u32::MAX];
    (prop::option::of(non_empty_text()), timeout, kind).prop_map(|(name, timeout, kind)| Check {
        name,
        timeout,
        kind,
    })
}

fn test_spec() -> impl Strategy<Value = TestSpec> {
    (
        prop::option::of(64..=u32::MAX),
        prop::option::of(1..=u32::MAX),
        prop::option::of(1..=u32::MAX),
        prop::collection::vec(check(), 1..5),
    )
        .prop_map(|(memory_mb, cpus, boot_timeout, checks)| TestSpec {
            memory_mb,
            cpus,
            boot_timeout,
            checks: checks.into_iter().map(at).collect(),
        })
}

/// Partition names, labels and node types.
fn identifier(max: usize) -> impl Strategy<Value = String> {
    prop::string::string_regex(&format!("[A-Za-z0-9._-]{{1,{max}}}")).expect("valid regex")
}

/// Byte sizes, often in whole units so every unit gets printed.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        1..=u64::MAX,
        (1u64..=4096, 0u32..=4).prop_map(|(n, unit)| n << (10 * unit)),
    ]
}

fn partition_source(builds: Vec<String>) -> BoxedStrategy<PartitionSource> {
    let spec_path = text()
        .prop_filter("relative, without `..`", |p| {
            !p.is_empty() && !p.starts_with('/') && !p.split('/').any(|c| c == "..")
        })
        .prop_map(PartitionSource::Spec);
    if builds.is_empty() {
        return spec_path.boxed();
    }
    prop_oneof![
        spec_path,
        prop::sample::select(builds).prop_map(PartitionSource::Build)
    ]
    .boxed()
}

fn partition(builds: Vec<String>) -> impl Strategy<Value = PartitionSpec> {
    (
        identifier(24),
        partition_source(builds),
        prop::option::of(size()),
        prop::option::of(identifier(16)),
    )
        .prop_map(|(name, source, size, mut label)| {
            if label.is_none() && name.len() > 16 {
                label = Some(name[..16].to_string());
            }
            PartitionSpec {
                name,
                source,
                size,
                label,
            }
        })
}

/// A valid image: unique partition names and labels, a default among them.
fn image_spec(builds: Vec<String>) -> impl Strategy<Value = ImageSpec> {
    (
        prop::collection::vec(partition(builds), 1..4),
        any::<Option<prop::sample::Index>>(),
        prop::collection::vec(identifier(8), 0..3),
        prop::sample::subsequence(DEBIAN_ARCHES.to_vec(), 0..4).prop_shuffle(),
    )
        .prop_map(|(mut partitions, default, mut node_types, arches)| {
            let mut names = std::collections::HashSet::new();
            let mut labels = std::collections::HashSet::new();
            partitions.retain(|p| {
                names.insert(p.name.clone()) && labels.insert(p.effective_label().to_string())
            });
            let mut seen = std::collections::HashSet::new();
            node_types.retain(|t| seen.insert(t.clone()));
            ImageSpec {
                default: default.map(|i| i.get(&partitions).name.clone()),
                partitions: partitions.into_iter().map(at).collect(),
                node_types,
                arches: arches.into_iter().map(str::to_string).collect(),
            }
        })
}

/// A valid spec with child builds nested up to `depth` levels; only the
/// outermost (`top`) spec may have `test` and `image`.
fn spec(depth: u32, top: bool) -> BoxedStrategy<Spec> {
    let builds = if depth == 0 {
        Just(Vec::new()).boxed()
    } else {
        prop::collection::vec((non_empty_text(), spec(depth - 1, false)), 0..3)
            .prop_map(|mut builds| {
                let mut seen = std::collections::HashSet::new();
                builds.retain(|(name, _)| seen.insert(name.clone()));
                builds
            })
            .boxed()
    };
    let sandbox = prop::option::of(prop_oneof![
        Just(SandboxKind::Chroot),
        Just(SandboxKind::Qemu)
    ]);
    (builds, non_empty_text(), bootstrap(), sandbox)
        .prop_flat_map(move |(builds, from, bootstrap, sandbox)| {
            let names: Vec<String> = builds.iter().map(|(n, _)| n.clone()).collect();
            let (test, image) = if top {
                (
                    prop::option::of(test_spec()).boxed(),
                    prop::option::of(image_spec(names.clone())).boxed(),
                )
            } else {
                (Just(None).boxed(), Just(None).boxed())
            };
            let ops = prop::collection::vec(op(names), 0..8);
            (ops, test, image).prop_map(move |(ops, test, image)| Spec {
                child_builds: builds
                    .iter()
                    .map(|(name, spec)| {
                        at(ChildBuild {
                            name: name.clone(),
                            spec: spec.clone(),
                        })
                    })
                    .collect(),
                from: at(from.clone()),
                bootstrap: bootstrap.clone().map(at),
                sandbox: sandbox.map(at),
                ops: ops.into_iter().map(at).collect(),
                test: test.map(at),
                image: image.map(at),
                appliance: None,
            })
        })
        .boxed()
}

/// What must hold for any text: no panic, and a spec that parses round-trips.
fn check_text(text: &str) -> Result<(), TestCaseError> {
    if let Ok(spec) = parse(text) {
        let printed = print(&spec);
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&spec), "printed:\n{}", printed);
        prop_assert_eq!(print(&spec), printed);
        // Keeping comments never panics, and what it prints means the same spec, keeps
        // every comment and formats to itself.
        let with_comments = print_with_comments(&spec, text)
            .map_err(|e| TestCaseError::fail(format!("a parsed spec must format: {e}")))?;
        let reparsed = parse(&with_comments);
        prop_assert_eq!(reparsed.as_ref(), Ok(&spec), "printed:\n{}", with_comments);
        let again = print_with_comments(&spec, &with_comments)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&again, &with_comments, "not idempotent; input:\n{}", text);
        let sorted = |t: &str| {
            let mut c = comments(t).unwrap_or_default();
            c.sort();
            c
        };
        prop_assert_eq!(
            sorted(&with_comments),
            sorted(text),
            "comments changed:\n{}",
            with_comments
        );
    }
    Ok(())
}

/// Every fixture spec, good and bad, as mutation seeds (read once).
fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(read_seeds)
}

fn read_seeds() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut seeds = Vec::new();
    for dir in ["obuilder", "canonical", "malformed"] {
        let mut paths: Vec<_> = fs::read_dir(root.join(dir))
            .expect("fixture directory")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "spec"))
            .collect();
        paths.sort();
        seeds.extend(
            paths
                .iter()
                .map(|p| fs::read_to_string(p).expect("fixture")),
        );
    }
    seeds
}

/// One edit of a seed: delete, insert or swap characters, or splice in a token.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize),
    Insert(usize, char),
    Swap(usize, usize),
    Splice(usize, &'static str),
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    "\"",
    "\\",
    "#|",
    "|#",
    "#;",
    ";",
    " ",
    "\n",
    "..",
    "/",
    "(from x)",
    "(build b ((from y)))",
    "(run (shell x))",
    "(copy (from (build b)) (src a) (dst d))",
    "(bootstrap)",
    "(test (port (port 22)))",
    "(http (port 80) (path /) (status 200))",
    "(image (partition (name a) (spec a)))",
    "(partition (name b) (build b) (size 1.5G))",
    "(default a)",
    "(env A b)",
    "\\300",
    "\\x",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Delete),
        (any::<usize>(), any::<char>()).prop_map(|(i, c)| Mutation::Insert(i, c)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, j)| Mutation::Swap(i, j)),
        (any::<usize>(), prop::sample::select(TOKENS)).prop_map(|(i, t)| Mutation::Splice(i, t)),
    ]
}

fn mutate(seed: &str, mutations: &[Mutation]) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for m in mutations {
        let n = chars.len();
        match *m {
            Mutation::Delete(i) if n > 0 => {
                chars.remove(i % n);
            }
            Mutation::Insert(i, c) => chars.insert(i % (n + 1), c),
            Mutation::Swap(i, j) if n > 0 => chars.swap(i % n, j % n),
            Mutation::Splice(i, token) => {
                let at = i % (n + 1);
                chars.splice(at..at, token.chars());
            }
            _ => {}
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    #[test]
    fn random_specs_round_trip(spec in spec(2, true)) {
        let printed = print(&spec);
        let reparsed = parse(&printed);
        prop_assert_eq!(reparsed.as_ref(), Ok(&spec), "printed:\n{}", printed);
        prop_assert_eq!(&print(&spec), &printed);
        // A comment line before every item after the first (lines starting with one
        // space then `(`) is already in canonical layout, comments included.
        let commented: String = printed
            .lines()
            .enumerate()
            .map(|(i, line)| {
                if line.starts_with(" (") {
                    format!(" ; note {i}\n{line}\n")
                } else {
                    format!("{line}\n")
                }
            })
            .collect();
        let spec_again = parse(&commented).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&spec_again, &spec);
        prop_assert_eq!(print_with_comments(&spec_again, &commented), Ok(commented.clone()));
    }
}

/// Where a comment may go in `text`: between tokens, outside quoted atoms.
fn token_boundaries(text: &str) -> Vec<usize> {
    let chars: Vec<char> = text.chars().collect();
    let delimiter = |c: char| matches!(c, '(' | ')' | ' ' | '\n');
    let mut in_string = false;
    let mut escaped = false;
    let mut out = Vec::new();
    for i in 0..=chars.len() {
        let before = i.checked_sub(1).map(|j| chars[j]);
        if !in_string
            && (before.is_none_or(delimiter) || chars.get(i).is_none_or(|&c| delimiter(c)))
        {
            out.push(i);
        }
        let Some(&c) = chars.get(i) else { break };
        match c {
            _ if escaped => escaped = false,
            '\\' if in_string => escaped = true,
            '"' => in_string = !in_string,
            _ => {}
        }
    }
    out
}

/// A comment of each kind sexplib has, numbered so every one is distinct.
fn comment_text(kind: usize, n: usize) -> String {
    match kind {
        0 => format!(" ;c{n}\n"),
        1 => format!(" #|b{n} (x) \"|#\" |# "),
        2 => format!(" #;(d{n} (e)) "),
        3 => format!("\n\n; c{n} after a blank line\n"),
        _ => format!(" #;d{n}\n"),
    }
}

proptest! {
    #![proptest_config(Config { cases: 512, ..Config::default() })]

    /// Comments dropped at random token boundaries of any spec: `kiln fmt` output means
    /// the same spec, holds every comment exactly once and formats to itself.
    #[test]
    fn formatting_keeps_comments_inserted_anywhere(
        spec in spec(2, true),
        spots in prop::collection::vec((any::<prop::sample::Index>(), 0..5usize), 1..12),
    ) {
        let printed = print(&spec);
        let boundaries = token_boundaries(&printed);
        let mut chosen: Vec<(usize, usize, usize)> = spots
            .iter()
            .enumerate()
            .map(|(n, (index, kind))| (boundaries[index.index(boundaries.len())], *kind, n))
            .collect();
        chosen.sort();
        let mut chars: Vec<char> = printed.chars().collect();
        for &(at, kind, n) in chosen.iter().rev() {
            chars.splice(at..at, comment_text(kind, n).chars());
        }
        let text: String = chars.into_iter().collect();
        let parsed = parse(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(&parsed, &spec, "comments changed the spec:\n{}", text);
        let out = print_with_comments(&parsed, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let again = parse(&out).map_err(|e| TestCaseError::fail(format!("{e}\n{out}")))?;
        prop_assert_eq!(&again, &spec, "formatted:\n{}", out);
        let mut before = comments(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut after = comments(&out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(before.len(), spots.len());
        before.sort();
        after.sort();
        prop_assert_eq!(after, before, "input:\n{}\nformatted:\n{}", text, out);
        let twice = print_with_comments(&again, &out).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(twice, out.clone(), "not idempotent; input:\n{}", text);
    }
}

proptest! {
    #![proptest_config(Config { cases: 2000, ..Config::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check_text(&text)?;
    }

    #[test]
    fn sexp_shaped_text_never_panics(
        text in "[()\" \n;#|\\\\a-z0-9/.:]{0,200}",
    ) {
        check_text(&format!("((from x) {text})"))?;
        check_text(&text)?;
    }

    #[test]
    fn mutated_fixtures_never_panic(
        index in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seed = index.get(seeds());
        check_text(&mutate(seed, &mutations))?;
    }
}

#[test]
fn mutation_helper_changes_text() {
    // Guards the mutation test: a mutation must actually reach the parser.
    assert_eq!(mutate("abc", &[Mutation::Delete(1)]), "ac");
    assert_eq!(mutate("abc", &[Mutation::Insert(5, 'x')]), "axbc");
    assert_eq!(mutate("abc", &[Mutation::Swap(0, 2)]), "cba");
    assert_eq!(mutate("ab", &[Mutation::Splice(1, "#|")]), "a#|b");
    assert!(seeds().len() > 60);
}
