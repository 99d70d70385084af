//! The marketplace's web page: rendered on the server (it works without JavaScript; a
//! few lines of script only add the copy buttons), searchable through a GET form with
//! the API's parameters.

use super::{base_url, entries, filter_from_query, ApiError, Shared};
use crate::metadata::{Metadata, Validity};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::Html;
use chrono::Utc;
use std::collections::HashMap;
use std::fmt::Write;

/// Escapes text for HTML content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;width:100%}th,td{border-bottom:1px solid #ddd;padding:.4em;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.valid{color:#16651f}.expired{color:#8a5a00}.deprecated{color:#a11}\
code{background:#f4f4f4;padding:.1em .3em}.pull{display:flex;gap:.3em}.pull input{font-family:monospace;width:34em}\
form{margin:1em 0}form input{margin-right:.5em}small{color:#666}\
dl.meta{font-size:.8em;display:grid;grid-template-columns:max-content auto;gap:0 .6em}dl.meta dd{margin:0;word-break:break-all}";

const SCRIPT: &str = "document.querySelectorAll('button.copy').forEach(function(b){b.addEventListener('click',function(){\
var i=b.previousElementSibling;i.select();\
if(navigator.clipboard){navigator.clipboard.writeText(i.value).catch(function(){document.execCommand('copy')})}else{document.execCommand('copy')}\
b.textContent='copied';})});";

fn row(out: &mut String, m: &Metadata, base: &str) {
    let now = Utc::now();
    let validity = m.validity(now);
    let state = match (&validity, &m.deprecated) {
        (Validity::Deprecated, Some(d)) => format!("deprecated: {}", esc(&d.reason)),
        (v, _) => v.as_str().to_string(),
    };
    let os: Vec<String> = m
        .partitions
        .iter()
        .map(|p| {
            let name = if p.pretty_name.is_empty() {
                format!("{} {}", p.os, p.os_version)
            } else {
                p.pretty_name.clone()
            };
            format!("{} ({})", esc(&name), esc(&p.arch))
        })
        .collect();
    let pull = format!("kiln image pull {base}/{}", m.short_id);
    let _ = write!(
        out,
        "<tr class=\"image\" data-id=\"{id}\"><td><b class=\"title\">{title}</b> <span class=\"version\">{version}</span>\
<br><small>{desc}</small>{details}</td>\
<td><code class=\"short-id\" title=\"{id}\">{short}</code></td><td class=\"os\">{os}</td>\
<td class=\"endorser\">{endorser}<br><small>key {key}</small></td>\
<td class=\"state {class}\">{state}<br><small>until {until}</small></td>\
<td>{format}, {size}</td>\
<td><div class=\"pull\"><input class=\"pull-command\" readonly value=\"{pull}\"><button class=\"copy\" type=\"button\">copy</button></div></td></tr>",
        id = esc(&m.id),
        title = esc(&m.title),
        version = esc(&m.version),
        desc = esc(&m.description),
        short = esc(&m.short_id),
        os = if os.is_empty() { "—".to_string() } else { os.join("<br>") },
        endorser = esc(&m.endorser.email),
        key = esc(&m.endorser.key_id),
        class = validity.as_str(),
        until = esc(&m.valid_until),
        format = esc(&m.format),
        size = human_bytes(m.bytes),
        pull = esc(&pull),
        details = details(m),
    );
    out.push('\n');
}

/// The rest of the metadata, folded: digests, dates, author, node types, locations.
fn details(m: &Metadata) -> String {
    let mut rows = vec![
        ("sha256", m.checksums.sha256.clone()),
        ("sha512", m.checksums.sha512.clone()),
        ("created", m.created.clone()),
        ("author", format!("{} <{}>", m.author.name, m.author.email)),
        ("virtual size", human_bytes(m.virtual_size)),
        ("boot", m.boot.clone()),
    ];
    if !m.node_types.is_empty() {
        rows.push(("node types", m.node_types.join(", ")));
    }
    for l in &m.locations {
        rows.push(("location", l.clone()));
    }
    if !m.comment.is_empty() {
        rows.push(("comment", m.comment.clone()));
    }
    let mut out = String::from("<details><summary>details</summary><dl class=\"meta\">");
    for (k, v) in rows {
        let _ = write!(out, "<dt>{k}</dt><dd>{}</dd>", esc(&v));
    }
    out.push_str("</dl></details>");
    out
}

pub(crate) async fn index(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Html<String>, ApiError> {
    let filter = filter_from_query(&query);
    let base = base_url(&state, &headers);
    let now = Utc::now();
    let all = entries(&state).await?;
    let shown: Vec<&Metadata> = all
        .iter()
        .filter(|e| e.image.is_some() && filter.matches(&e.metadata, now))
        .map(|e| &e.metadata)
        .collect();
    let total = all.iter().filter(|e| e.image.is_some()).count();
    let value = |k: &str| esc(query.get(k).map(String::as_str).unwrap_or(""));
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>kiln marketplace</title>\
<style>{STYLE}</style></head><body><h1>kiln marketplace</h1>\
<form method=\"get\" action=\"/\"><input name=\"q\" placeholder=\"search\" value=\"{q}\">\
<input name=\"os\" placeholder=\"os (debian)\" value=\"{os}\"><input name=\"arch\" placeholder=\"arch (amd64)\" value=\"{arch}\">\
<input name=\"endorser\" placeholder=\"endorser\" value=\"{endorser}\">\
<label><input type=\"checkbox\" name=\"include_expired\" value=\"1\"{checked}> include expired</label>\
<button type=\"submit\">search</button></form>\
<p id=\"count\">{n} of {total} image{s}</p>",
        q = value("q"),
        os = value("os"),
        arch = value("arch"),
        endorser = value("endorser"),
        checked = if filter.include_expired { " checked" } else { "" },
        n = shown.len(),
        s = if total == 1 { "" } else { "s" },
    );
    out.push_str(
        "<table id=\"images\"><thead><tr><th>image</th><th>id</th><th>OS</th><th>endorser</th>\
<th>validity</th><th>file</th><th>pull</th></tr></thead><tbody>\n",
    );
    for m in shown {
        row(&mut out, m, &base);
    }
    let _ = writeln!(
        out,
        "</tbody></table><script>{SCRIPT}</script></body></html>"
    );
    Ok(Html(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
