//! Maps a toml deserialization error back to the key path it is about (`users[0].name`).

use std::ops::Range;

use super::ConfigError;

/// Turns a toml error into a [`ConfigError`] that names the key path when one can be found.
pub(super) fn toml_error(src: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().trim();
    let Some(span) = e.span() else {
        return ConfigError(format!("invalid TOML: {msg}"));
    };
    let (line, col) = line_col(src, span.start);
    let path = toml::de::DeTable::parse(src)
        .ok()
        .and_then(|doc| locate_in_table(doc.get_ref(), &span, String::new()));
    match path {
        Some(p) if !p.is_empty() => ConfigError(format!("{p}: {msg} (line {line}, column {col})")),
        _ => ConfigError(format!("invalid TOML at line {line}, column {col}: {msg}")),
    }
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// Finds the deepest key path whose key or value span contains `span`.
fn locate_in_table(
    t: &toml::de::DeTable<'_>,
    span: &Range<usize>,
    prefix: String,
) -> Option<String> {
    for (k, v) in t.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        if contains(&k.span(), span) {
            return Some(path);
        }
        if let Some(found) = locate_in_value(v.get_ref(), span, &path) {
            return Some(found);
        }
        if contains(&v.span(), span) {
            return Some(path);
        }
    }
    None
}

fn locate_in_value(v: &toml::de::DeValue<'_>, span: &Range<usize>, path: &str) -> Option<String> {
    match v {
        toml::de::DeValue::Table(t) => locate_in_table(t, span, path.to_string()),
        toml::de::DeValue::Array(a) => a.iter().enumerate().find_map(|(i, item)| {
            let p = format!("{path}[{i}]");
            locate_in_value(item.get_ref(), span, &p)
                .or_else(|| contains(&item.span(), span).then_some(p))
        }),
        _ => None,
    }
}
