//! Result and event templates: any JSON, with `{{…}}` placeholders, checked
//! once when the simulator starts and rendered per command.
//!
//! A string that is exactly one placeholder becomes the placeholder's JSON
//! value (a number stays a number); a placeholder inside a longer string is
//! substituted as text.

use super::rng::SplitMix64;
use super::SimError;
use serde_json::{Map, Number, Value};

/// What a template is rendered from: the command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Context<'a> {
    /// The command's sequence number (1 for the first command).
    pub(crate) seq: u64,
    pub(crate) id: &'a str,
    pub(crate) ty: &'a str,
    pub(crate) subject: Option<&'a str>,
    pub(crate) jobid: Option<&'a str>,
    /// The command's data (`null` when it had none).
    pub(crate) params: &'a Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Placeholder {
    Seq,
    Id,
    Type,
    Subject,
    JobId,
    Now,
    Param(Vec<String>),
    RandomF64(f64, f64),
    RandomInt(i64, i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Hole(Placeholder),
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Literal(Value),
    Whole(Placeholder),
    Text(Vec<Piece>),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

/// A checked template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Template(Node);

impl Template {
    /// Checks every placeholder of `value`.
    ///
    /// `what` names the template in errors (`rule 'x' result`).
    pub(crate) fn compile(value: &Value, what: &str) -> Result<Template, SimError> {
        compile(value)
            .map(Template)
            .map_err(|reason| SimError::Template {
                template: what.to_owned(),
                reason,
            })
    }

    /// Renders the template for one command; random placeholders draw from
    /// `rng` in document order.
    pub(crate) fn render(&self, ctx: &Context<'_>, rng: &mut SplitMix64) -> Value {
        render(&self.0, ctx, rng)
    }
}

fn compile(value: &Value) -> Result<Node, String> {
    Ok(match value {
        Value::String(s) => compile_string(s)?,
        Value::Array(items) => Node::Array(items.iter().map(compile).collect::<Result<_, _>>()?),
        Value::Object(map) => Node::Object(
            map.iter()
                .map(|(k, v)| compile(v).map(|n| (k.clone(), n)))
                .collect::<Result<_, _>>()?,
        ),
        other => Node::Literal(other.clone()),
    })
}

fn compile_string(s: &str) -> Result<Node, String> {
    let mut pieces = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        let inner = &rest[start + 2..start + 2 + len];
        pieces.push(Piece::Hole(placeholder(inner)?));
        rest = &rest[start + 2 + len + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(match pieces.as_slice() {
        [] => Node::Literal(Value::String(String::new())),
        [Piece::Text(t)] => Node::Literal(Value::String(t.clone())),
        [Piece::Hole(p)] => Node::Whole(p.clone()),
        _ => Node::Text(pieces),
    })
}

fn placeholder(inner: &str) -> Result<Placeholder, String> {
    let mut words = inner.split_whitespace();
    let name = words.next().unwrap_or("");
    let args: Vec<&str> = words.collect();
    let no_args = |p: Placeholder| {
        if args.is_empty() {
            Ok(p)
        } else {
            Err(format!("placeholder '{{{{{inner}}}}}' takes no arguments"))
        }
    };
    let bounds = || -> Result<(&str, &str), String> {
        match args.as_slice() {
            [a, b] => Ok((a, b)),
            _ => Err(format!(
                "placeholder '{{{{{inner}}}}}' needs two bounds, e.g. {{{{{name} 1 10}}}}"
            )),
        }
    };
    match name {
        "seq" => no_args(Placeholder::Seq),
        "id" => no_args(Placeholder::Id),
        "type" => no_args(Placeholder::Type),
        "subject" => no_args(Placeholder::Subject),
        "jobid" => no_args(Placeholder::JobId),
        "now" => no_args(Placeholder::Now),
        "random.f64" => {
            let (a, b) = bounds()?;
            match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(a), Ok(b)) if a.is_finite() && b.is_finite() && a <= b => {
                    Ok(Placeholder::RandomF64(a, b))
                }
                _ => Err(format!(
                    "placeholder '{{{{{inner}}}}}': bounds must be numbers with min <= max"
                )),
            }
        }
        "random.int" => {
            let (a, b) = bounds()?;
            match (a.parse::<i64>(), b.parse::<i64>()) {
                (Ok(a), Ok(b)) if a <= b => Ok(Placeholder::RandomInt(a, b)),
                _ => Err(format!(
                    "placeholder '{{{{{inner}}}}}': bounds must be integers with min <= max"
                )),
            }
        }
        "param" => no_args(Placeholder::Param(Vec::new())),
        _ => match name.strip_prefix("param.") {
            Some(path) if !path.split('.').any(str::is_empty) => no_args(Placeholder::Param(
                path.split('.').map(str::to_owned).collect(),
            )),
            _ => Err(format!(
                "unknown placeholder '{{{{{inner}}}}}' (known: seq, id, type, subject, jobid, now, \
                 param, param.X.Y, random.f64 A B, random.int A B)"
            )),
        },
    }
}

fn render(node: &Node, ctx: &Context<'_>, rng: &mut SplitMix64) -> Value {
    match node {
        Node::Literal(v) => v.clone(),
        Node::Whole(p) => value_of(p, ctx, rng),
        Node::Text(pieces) => {
            let mut s = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => s.push_str(t),
                    Piece::Hole(p) => match value_of(p, ctx, rng) {
                        Value::String(v) => s.push_str(&v),
                        Value::Null => {}
                        other => s.push_str(&other.to_string()),
                    },
                }
            }
            Value::String(s)
        }
        Node::Array(items) => Value::Array(items.iter().map(|n| render(n, ctx, rng)).collect()),
        Node::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, n)| (k.clone(), render(n, ctx, rng)))
                .collect::<Map<_, _>>(),
        ),
    }
}

fn value_of(p: &Placeholder, ctx: &Context<'_>, rng: &mut SplitMix64) -> Value {
    let text = |s: Option<&str>| s.map_or(Value::Null, |s| Value::String(s.to_owned()));
    match p {
        Placeholder::Seq => Value::from(ctx.seq),
        Placeholder::Id => text(Some(ctx.id)),
        Placeholder::Type => text(Some(ctx.ty)),
        Placeholder::Subject => text(ctx.subject),
        Placeholder::JobId => text(ctx.jobid),
        Placeholder::Now => Value::String(crate::envelope::format_time(&chrono::Utc::now())),
        Placeholder::Param(path) => path
            .iter()
            .try_fold(ctx.params, |v, key| match v {
                Value::Object(m) => m.get(key),
                Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            })
            .cloned()
            .unwrap_or(Value::Null),
        Placeholder::RandomF64(a, b) => {
            let x = a + (b - a) * rng.next_f64();
            Number::from_f64(x).map_or(Value::Null, Value::Number)
        }
        Placeholder::RandomInt(a, b) => {
            // The span fits in u64 even for i64::MIN..=i64::MAX minus one.
            let span = b.abs_diff(*a).saturating_add(1);
            let offset = if span == 0 { 0 } else { rng.next_u64() % span };
            Value::from(a.wrapping_add(offset as i64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(params: &Value) -> Context<'_> {
        Context {
            seq: 7,
            id: "cmd-1",
            ty: "t.v1",
            subject: Some("line.press"),
            jobid: Some("job-1"),
            params,
        }
    }

    fn render_once(template: &Value, params: &Value) -> Value {
        let t = Template::compile(template, "test").unwrap();
        t.render(&ctx(params), &mut SplitMix64::new(1))
    }

    #[test]
    fn whole_placeholders_keep_their_json_type() {
        let out = render_once(
            &json!({"F": "{{param.Force}}", "N": "{{seq}}", "Deep": "{{param.A.1}}", "All": "{{param}}", "Missing": "{{param.Nope}}"}),
            &json!({"Force": 12.5, "A": [1, {"x": true}]}),
        );
        assert_eq!(out["F"], json!(12.5));
        assert_eq!(out["N"], json!(7));
        assert_eq!(out["Deep"], json!({"x": true}));
        assert_eq!(out["All"]["Force"], json!(12.5));
        assert_eq!(out["Missing"], Value::Null);
    }

    #[test]
    fn embedded_placeholders_are_text() {
        let out = render_once(
            &json!([
                "job {{jobid}} step {{seq}} on {{subject}}",
                "{{ id }}",
                "no {{ end",
                3
            ]),
            &Value::Null,
        );
        assert_eq!(
            out,
            json!(["job job-1 step 7 on line.press", "cmd-1", "no {{ end", 3])
        );
    }

    #[test]
    fn random_placeholders_stay_in_bounds_and_follow_the_seed() {
        let t = Template::compile(
            &json!({"f": "{{random.f64 20 30}}", "i": "{{random.int -2 2}}"}),
            "t",
        )
        .unwrap();
        let params = Value::Null;
        let mut a = SplitMix64::new(5);
        let mut b = SplitMix64::new(5);
        for _ in 0..200 {
            let x = t.render(&ctx(&params), &mut a);
            assert_eq!(x, t.render(&ctx(&params), &mut b));
            let f = x["f"].as_f64().unwrap();
            let i = x["i"].as_i64().unwrap();
            assert!((20.0..30.0).contains(&f), "{f}");
            assert!((-2..=2).contains(&i), "{i}");
        }
    }

    #[test]
    fn bad_placeholders_are_rejected_when_compiled() {
        for bad in [
            "{{nope}}",
            "{{seq 1}}",
            "{{random.f64 1}}",
            "{{random.f64 3 1}}",
            "{{random.int a b}}",
            "{{param.}}",
        ] {
            let e = Template::compile(&json!({ "x": bad }), "rule 'r' result").unwrap_err();
            assert!(e.to_string().contains("rule 'r' result"), "{e}");
        }
    }
}
