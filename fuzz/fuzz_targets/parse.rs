//! Feeds arbitrary UTF-8 to the spec parser. It must never panic, and whatever
//! parses must survive print → parse unchanged and print the same text twice; the
//! comment-keeping printer (`kiln fmt`) must keep every comment and be idempotent too.
//! `crates/kiln-spec/tests/properties.rs` checks the same property on stable.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = kiln_spec::parse(text) else {
        return;
    };
    let printed = kiln_spec::print(&spec);
    let reparsed = match kiln_spec::parse(&printed) {
        Ok(reparsed) => reparsed,
        Err(e) => panic!("printed spec does not parse: {e}\n{printed}"),
    };
    assert_eq!(reparsed, spec, "print/parse changed the spec:\n{printed}");
    assert_eq!(
        kiln_spec::print(&reparsed),
        printed,
        "printing is not idempotent"
    );
    let formatted = kiln_spec::print_with_comments(&spec, text).expect("a parsed spec formats");
    assert_eq!(kiln_spec::parse(&formatted).ok(), Some(spec.clone()), "fmt changed the spec:\n{formatted}");
    let again = kiln_spec::print_with_comments(&spec, &formatted).expect("formats");
    assert_eq!(again, formatted, "fmt is not idempotent");
    let sorted = |t: &str| {
        let mut c = kiln_spec::comments(t).expect("reads");
        c.sort();
        c
    };
    assert_eq!(sorted(&formatted), sorted(text), "fmt lost or added a comment");
});
