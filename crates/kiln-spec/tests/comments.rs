//! `print_with_comments`: the canonical layout keeps every comment next to what it annotates.

use kiln_spec::{parse, print, print_with_comments};

/// Formats `text`, checks the result means the same spec, keeps every comment and
/// formats to itself.
fn format(text: &str) -> String {
    let spec = parse(text).expect("input parses");
    let out = print_with_comments(&spec, text).expect("formats");
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
    assert_eq!(format(text), expected);
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
fn comments_between_fields_break_the_form_and_stay_beside_their_field() {
    let text = r#"((from debian:bookworm)
 (run ; why this step
  (network host) ; it fetches
  ; the command
  (shell "make")))
"#;
    let expected = r#"((from debian:bookworm)
 (run ; why this step
      (network host) ; it fetches
      ; the command
      (shell make)))
"#;
    assert_eq!(format(text), expected);
}

#[test]
fn comments_between_atoms_and_before_a_list_end() {
    let text = r#"((from debian:bookworm)
 (copy (src a ; first
            b)
       (dst /x/)
       ; end of copy
       ))
"#;
    let expected = r#"((from debian:bookworm)
 (copy (src a ; first
            b)
       (dst /x/)
       ; end of copy
       ))
"#;
    assert_eq!(format(text), expected);
}

#[test]
fn fields_move_to_canonical_order_with_their_comments() {
    let text = r#"((from debian:bookworm)
 (copy (dst /x/) ; where
       (src a) ; what
       ))
"#;
    let expected = r#"((from debian:bookworm)
 (copy (src a) ; what
       ; where
       (dst /x/)))
"#;
    assert_eq!(format(text), expected);
}

#[test]
fn comments_in_left_out_defaults_move_to_the_next_field() {
    let text = r#"((from debian:bookworm)
 (copy (from context) ; the default
       (src a) (dst /x/))
 (run (network) #| isolated |# (shell true)))
"#;
    let expected = r#"((from debian:bookworm)
 (copy
       ; the default
       (src a)
       (dst /x/))
 (run
      #| isolated |#
      (shell true)))
"#;
    assert_eq!(format(text), expected);
}

#[test]
fn datum_comments_are_kept_as_written() {
    let text =
        "((from debian:bookworm)\n #;(run (shell old))\n (run #; (network host) (shell true)))\n";
    let expected = "((from debian:bookworm)\n #;(run (shell old))\n (run #; (network host)\n      (shell true)))\n";
    assert_eq!(format(text), expected);
}

#[test]
fn comments_inside_child_builds_stay_there() {
    let text = r#"((build b ; the stage
  ( ; its base
   (from alpine)
   ; compile
   (run (shell make)) ; slow
   ; end of b
   ))
 (from debian:bookworm)
 (copy (from (build b)) (src /out) (dst /out)))
"#;
    let expected = r#"((build b ; the stage
   ; its base
   ((from alpine)
    ; compile
    (run (shell make)) ; slow
    ; end of b
    ))
 (from debian:bookworm)
 (copy (from (build b)) (src /out) (dst /out)))
"#;
    assert_eq!(format(text), expected);
}

#[test]
fn single_blank_lines_between_items_are_kept() {
    let text = "((from debian:bookworm)\n\n\n (run (shell a))\n (run (shell b))\n\n ; c\n\n (run (shell c)))\n";
    let expected = "((from debian:bookworm)\n\n (run (shell a))\n (run (shell b))\n\n ; c\n\n (run (shell c)))\n";
    assert_eq!(format(text), expected);
}

#[test]
fn comments_after_the_spec_and_crlf_lines() {
    let text = "; head\r\n((from x) (run (shell y))) ; tail\r\n; more\r\n";
    assert_eq!(
        format(text),
        "; head\n((from x)\n (run (shell y)))\n; tail\n; more\n"
    );
}
