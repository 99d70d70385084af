//! Feeds arbitrary UTF-8 to the spec parser. It must never panic, and whatever
//! parses must survive print → parse unchanged and print the same text twice.
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
});
