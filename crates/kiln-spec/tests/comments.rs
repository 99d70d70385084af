//! `print_with_comments`: the canonical layout keeps comments around and between items.

use kiln_spec::{parse, print, print_with_comments, Pos};

/// Formats `text`, checks the result means the same spec and formats to itself.
fn format(text: &str) -> String {
    let spec = parse(text).expect("input parses");
    let out = print_with_comments(&spec, text).expect("comments can be kept");
    let again = parse(&out).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(again, spec, "formatting changed the spec:\n{out}");
    assert_eq!(
        print_with_comments(&again, &out).unwrap(),
        out,
        "not idempotent"
    );
    out
}

#[test]
fn comments_stay_with_the_items_they_precede_or_follow() {
    let text = r#"; memcached for simulators
#| a block
   comment |#
((from debian:bookworm)
  (test (port (port 11211)))   ; checks go last
  ; the server
  (run (network host) (shell "apt-get install -y memcached")) ; from Debian
  #| why this file |#
  (copy (src memcached.conf) (dst /etc/memcached.conf))
  ; trailing note
 )
; after the spec
"#;
    let out = format(text);
    let expected = r#"; memcached for simulators
#| a block
   comment |#
((from debian:bookworm)
 ; the server
 (run (network host) (shell "apt-get install -y memcached")) ; from Debian
 #| why this file |#
 (copy (src memcached.conf) (dst /etc/memcached.conf))
 ; checks go last
 (test (port (port 11211))))
; trailing note
; after the spec
"#;
    assert_eq!(out, expected);
}

#[test]
fn without_comments_it_is_the_canonical_print() {
    let text = "((from debian:bookworm)\n   (run (shell true)))";
    let spec = parse(text).unwrap();
    assert_eq!(print_with_comments(&spec, text).unwrap(), print(&spec));
}

#[test]
fn an_end_of_line_comment_on_the_last_item_does_not_swallow_the_closing_paren() {
    let out = format("((from debian:bookworm)\n (run (shell true)) ; last\n)\n");
    assert_eq!(
        out,
        "((from debian:bookworm)\n ; last\n (run (shell true)))\n"
    );
}

#[test]
fn a_comment_string_inside_quotes_is_not_a_comment() {
    let text = "((from debian:bookworm)\n (run (shell \"echo ';' #| x\")))\n";
    assert_eq!(format(text), print(&parse(text).unwrap()));
}

#[test]
fn comments_inside_forms_and_datum_comments_are_refused_with_their_position() {
    let inside = "((from debian:bookworm)\n (run ; here\n  (shell true)))\n";
    let spec = parse(inside).unwrap();
    assert_eq!(
        print_with_comments(&spec, inside),
        Err(Pos { line: 2, col: 7 })
    );
    let datum = "((from debian:bookworm)\n #;(run (shell old))\n (run (shell true)))\n";
    let spec = parse(datum).unwrap();
    assert_eq!(
        print_with_comments(&spec, datum),
        Err(Pos { line: 2, col: 2 })
    );
    let in_child = "((build b\n  ((from debian:bookworm) ; x\n   (run (shell true))))\n (from debian:bookworm))\n";
    let spec = parse(in_child).unwrap();
    assert_eq!(
        print_with_comments(&spec, in_child),
        Err(Pos { line: 2, col: 27 })
    );
}
