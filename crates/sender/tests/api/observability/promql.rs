//! PromQL as text: Grafana's variables filled in, alert conditions made to return every series,
//! metric names picked out. No PromQL parser is at hand in Rust; these work on the canonical form
//! Prometheus gives (`/api/v1/rules`) and on the dashboard's queries, and are unit-tested below.

/// `expr` with each `$name` and `${name}` replaced by its value; `Err(name)` for an unknown one.
pub fn fill_in(expr: &str, variables: &[(String, String)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let braced = after.starts_with('{');
        let name_start = usize::from(braced);
        let len = after[name_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len() - name_start);
        let name = &after[name_start..name_start + len];
        let value = variables.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        out.push_str(value.ok_or_else(|| name.to_owned())?);
        rest = &after[name_start + len + usize::from(braced)..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `expr` with `bool` after each comparison operator outside label matchers and strings, so the
/// comparison returns 0 or 1 instead of filtering (`a > 5` → `a > bool 5`).
pub fn with_bool_comparisons(expr: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let (mut out, mut depth, mut quote, mut i) = (String::new(), 0, None, 0);
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        out.push(c);
        i += 1;
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), '\\') => {
                out.extend(next);
                i += 1;
            }
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth += 1,
            (None, '}') => depth -= 1,
            (None, '>' | '<' | '=' | '!') if depth == 0 => {
                let two = next == Some('=');
                if two {
                    out.push('=');
                    i += 1;
                }
                let comparison = two || c == '>' || c == '<';
                let rest: String = chars[i..].iter().collect();
                if comparison && !rest.trim_start().starts_with("bool") {
                    out.push_str(" bool");
                    if !rest.starts_with(char::is_whitespace) {
                        out.push(' ');
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The metric names in `promql`: words outside double-quoted strings (the only kind our files and
/// Prometheus's canonical form use) that start like ours or CloudWatch's.
pub fn metric_names(promql: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, part) in promql.split('"').enumerate() {
        if i % 2 == 1 {
            continue; // inside a string
        }
        for word in part.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':')) {
            if word.starts_with("accrual_") || word.starts_with("aws_") {
                names.push(word.to_owned());
            }
        }
    }
    names
}

#[test]
fn comparisons_become_bool_outside_label_matchers_and_strings() {
    assert_eq!(
        with_bool_comparisons(r#"max(a{s=~"5..",t!="x>y"}) > 600 and b <= bool 2 or c != 0"#),
        r#"max(a{s=~"5..",t!="x>y"}) > bool 600 and b <= bool 2 or c != bool 0"#
    );
    assert_eq!(with_bool_comparisons("a==0"), "a== bool 0");
}

#[test]
fn variables_are_filled_in_and_an_unknown_one_is_named() {
    let vars = vec![
        ("__rate_interval".to_owned(), "1m".to_owned()),
        ("q".to_owned(), "main".to_owned()),
    ];
    assert_eq!(
        fill_in(r#"rate(x{q="${q}"}[$__rate_interval])"#, &vars),
        Ok(r#"rate(x{q="main"}[1m])"#.to_owned())
    );
    assert_eq!(fill_in("x[$nope]", &vars), Err("nope".to_owned()));
}
