//! Tenant scoping of PromQL, pure: every series selector of a query a user wrote (or that
//! the operator built from a user's object) gets the object's namespace matcher, the way
//! prom-label-proxy enforces a label. Prometheus itself has no notion of tenants and the
//! operator reads it with its own access, so without this a check in namespace A could
//! read namespace B's series.
//!
//! The query is parsed (`promql-parser`), rewritten and printed back. A selector that
//! already names the namespace label must say exactly `="<own namespace>"`; anything else
//! (another namespace, `!=`, a regular expression, even one that would match) is refused
//! with the matcher named, never silently replaced, so a user sees why the check cannot
//! work. The printed query is parsed and checked once more, so a printing quirk can only
//! ever cause a refusal, not an unscoped query.

use promql_parser::{
    label::{MatchOp, Matcher, Matchers},
    parser::{self, Expr, VectorSelector},
};

/// Why a query cannot be sent.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScopeError {
    #[error("the query does not parse: {0}")]
    Parse(String),
    #[error(
        "the query selects {matcher}: a check of namespace {namespace} reads only series with {label}=\"{namespace}\" (the operator adds that matcher itself)"
    )]
    ForeignNamespace { matcher: String, label: String, namespace: String },
    #[error("the query uses {0}, which a namespaced check cannot use")]
    Unsupported(&'static str),
    #[error("the scoped query did not print back faithfully (a bug): {0}")]
    Unfaithful(String),
}

/// `query` with every selector limited to `label="namespace"`, as the text to send.
pub fn scoped_query(query: &str, label: &str, namespace: &str) -> Result<String, ScopeError> {
    let mut expr = parser::parse(query).map_err(|e| ScopeError::Parse(e.trim().to_string()))?;
    enforce(&mut expr, label, namespace)?;
    let printed = expr.to_string();
    // Belt and braces: what Prometheus receives must itself be fully scoped, i.e. scoping
    // it again changes nothing.
    let mut again = parser::parse(&printed).map_err(|e| ScopeError::Unfaithful(format!("{e}: {printed}")))?;
    enforce(&mut again, label, namespace)?;
    if again.to_string() != printed {
        return Err(ScopeError::Unfaithful(printed));
    }
    Ok(printed)
}

/// Adds (or checks) the namespace matcher of every selector in `expr`. Every node kind is
/// listed, so a new kind in the parser fails to compile here rather than go unscoped.
fn enforce(expr: &mut Expr, label: &str, namespace: &str) -> Result<(), ScopeError> {
    match expr {
        Expr::VectorSelector(vs) => scope_selector(vs, label, namespace),
        Expr::MatrixSelector(ms) => scope_selector(&mut ms.vs, label, namespace),
        Expr::Aggregate(a) => {
            // The parameter (`topk(scalar(x), ...)`, `quantile(...)`) may select series too.
            if let Some(param) = a.param.as_mut() {
                enforce(param, label, namespace)?;
            }
            enforce(&mut a.expr, label, namespace)
        }
        Expr::Unary(u) => enforce(&mut u.expr, label, namespace),
        Expr::Binary(b) => {
            enforce(&mut b.lhs, label, namespace)?;
            enforce(&mut b.rhs, label, namespace)
        }
        Expr::Paren(p) => enforce(&mut p.expr, label, namespace),
        Expr::Subquery(s) => enforce(&mut s.expr, label, namespace),
        // `info()` joins in `target_info` series that no selector of the query names.
        Expr::Call(c) if c.func.name == "info" => Err(ScopeError::Unsupported("info()")),
        Expr::Call(c) => c.args.args.iter_mut().try_for_each(|arg| enforce(arg, label, namespace)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        // The parser never produces one; refused rather than trusted.
        Expr::Extension(_) => Err(ScopeError::Unsupported("an extension expression")),
    }
}

fn scope_selector(vs: &mut VectorSelector, label: &str, namespace: &str) -> Result<(), ScopeError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(ScopeError::Unsupported("`or` between label matchers"));
    }
    if let Some(m) = vs
        .matchers
        .matchers
        .iter()
        .find(|m| m.name == label && !(m.op == MatchOp::Equal && m.value == namespace))
    {
        return Err(ScopeError::ForeignNamespace {
            matcher: m.to_string(),
            label: label.into(),
            namespace: namespace.into(),
        });
    }
    // Our own matcher, exactly once.
    let mut matchers: Vec<Matcher> =
        vs.matchers.matchers.iter().filter(|m| m.name != label).cloned().collect();
    matchers.push(Matcher::new(MatchOp::Equal, label, namespace));
    vs.matchers = Matchers::new(matchers);
    Ok(())
}

/// Whether `name` can be the namespace label: a plain Prometheus label name, not one of
/// Prometheus' reserved `__` names.
pub fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scoped(q: &str) -> String {
        scoped_query(q, "namespace", "ml").unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    fn refused(q: &str) -> ScopeError {
        scoped_query(q, "namespace", "ml").expect_err(q)
    }

    #[test]
    fn a_plain_selector_gets_the_matcher() {
        assert_eq!(scoped("up"), r#"up{namespace="ml"}"#);
        assert_eq!(scoped(r#"up{pod="a"}"#), r#"up{namespace="ml",pod="a"}"#);
        assert_eq!(scoped(r#"up{namespace="ml",pod="a"}"#), r#"up{namespace="ml",pod="a"}"#);
    }

    #[test]
    fn a_name_only_selector_is_scoped_too() {
        assert_eq!(scoped(r#"{__name__=~".+"}"#), r#"{__name__=~".+",namespace="ml"}"#);
        assert_eq!(scoped(r#"{"my.metric", pod="a"}"#), r#"{__name__="my.metric",namespace="ml",pod="a"}"#);
        assert_eq!(scoped(r#"{__name__=~".+"}[10m:5ms]"#), r#"{__name__=~".+",namespace="ml"}[10m:5ms]"#);
    }

    #[test]
    fn selectors_inside_functions_aggregations_and_subqueries() {
        assert_eq!(
            scoped(r#"sum by (code) (rate(http_requests_total{code=~"5.."}[1m]))"#),
            r#"sum by (code) (rate(http_requests_total{code=~"5..",namespace="ml"}[1m]))"#
        );
        assert_eq!(
            scoped("max_over_time(rate(x[1m])[10m:30s])"),
            r#"max_over_time(rate(x{namespace="ml"}[1m])[10m:30s])"#
        );
        assert_eq!(
            scoped(r#"histogram_quantile(0.9, sum by (le) (rate(h_bucket[5m])))"#),
            r#"histogram_quantile(0.9, sum by (le) (rate(h_bucket{namespace="ml"}[5m])))"#
        );
        // The parameter of an aggregation is an expression too.
        assert_eq!(scoped("topk(scalar(k), x)"), r#"topk(scalar(k{namespace="ml"}), x{namespace="ml"})"#);
        assert_eq!(scoped("absent(x)"), r#"absent(x{namespace="ml"})"#);
        assert_eq!(
            scoped(r#"label_replace(x, "namespace", "other", "", "")"#),
            r#"label_replace(x{namespace="ml"}, "namespace", "other", "", "")"#,
            "relabelling the answer reads nothing more"
        );
    }

    #[test]
    fn both_sides_of_binary_expressions_whatever_the_matching() {
        assert_eq!(scoped("a / b"), r#"a{namespace="ml"} / b{namespace="ml"}"#);
        assert_eq!(scoped("a * on() b"), r#"a{namespace="ml"} * on () b{namespace="ml"}"#);
        assert_eq!(
            scoped("a / ignoring(code) group_left b"),
            r#"a{namespace="ml"} / ignoring (code) group_left () b{namespace="ml"}"#
        );
        assert_eq!(
            scoped("a * on(namespace) group_left(pod) b"),
            r#"a{namespace="ml"} * on (namespace) group_left (pod) b{namespace="ml"}"#
        );
        assert_eq!(scoped("a or vector(0)"), r#"a{namespace="ml"} or vector(0)"#);
        assert_eq!(
            scoped("(a > bool 1) unless b"),
            r#"(a{namespace="ml"} > bool 1) unless b{namespace="ml"}"#
        );
        assert_eq!(scoped("-a"), r#"-a{namespace="ml"}"#);
    }

    #[test]
    fn offsets_and_at_modifiers_are_kept() {
        assert_eq!(scoped("a offset 5m"), r#"a{namespace="ml"} offset 5m"#);
        assert_eq!(scoped("rate(a[1m] offset -1h)"), r#"rate(a{namespace="ml"}[1m] offset -1h)"#);
        assert_eq!(scoped("a @ 1700000000"), r#"a{namespace="ml"} @ 1700000000.000"#);
        assert_eq!(scoped("rate(a[1m] @ end())"), r#"rate(a{namespace="ml"}[1m] @ end())"#);
        assert_eq!(
            scoped("max_over_time(a[5m:] @ start())"),
            r#"max_over_time(a{namespace="ml"}[5m:] @ start())"#
        );
    }

    #[test]
    fn another_namespace_is_refused_naming_the_matcher() {
        for (q, matcher) in [
            (r#"sum(x{namespace="other"})"#, r#"namespace="other""#),
            (r#"x{namespace!="ml"}"#, r#"namespace!="ml""#),
            (r#"x{namespace=~"ml|other"}"#, r#"namespace=~"ml|other""#),
            // A regular expression that matches only our namespace is refused all the same:
            // the one accepted form is the exact one the operator would add.
            (r#"x{namespace=~"ml"}"#, r#"namespace=~"ml""#),
            (r#"x{namespace!~"ml"}"#, r#"namespace!~"ml""#),
            (r#"x{namespace=""}"#, r#"namespace="""#),
            (r#"a / on() b{namespace="other"}"#, r#"namespace="other""#),
            (r#"rate(x{namespace="other"}[5m])[10m:1m]"#, r#"namespace="other""#),
            (r#"{"namespace"="other"}"#, r#"namespace="other""#),
            (r#"x{namespace="ml",namespace="other"}"#, r#"namespace="other""#),
        ] {
            match refused(q) {
                ScopeError::ForeignNamespace { matcher: m, .. } => assert_eq!(m, matcher, "{q}"),
                e => panic!("{q}: {e:?}"),
            }
        }
        let message = refused(r#"x{namespace="other"}"#).to_string();
        assert!(message.contains(r#"namespace="other""#) && message.contains("namespace ml"), "{message}");
    }

    #[test]
    fn the_label_name_is_configurable() {
        assert_eq!(
            scoped_query("up", "kubernetes_namespace", "ml").unwrap(),
            r#"up{kubernetes_namespace="ml"}"#
        );
        assert!(scoped_query(r#"up{kubernetes_namespace="x"}"#, "kubernetes_namespace", "ml").is_err());
        // A matcher on some other label called namespace-ish is the user's business.
        assert_eq!(
            scoped_query(r#"up{namespace="x"}"#, "kubernetes_namespace", "ml").unwrap(),
            r#"up{kubernetes_namespace="ml",namespace="x"}"#
        );
        assert!(valid_label_name("namespace") && valid_label_name("k8s_namespace"));
        assert!(!valid_label_name("") && !valid_label_name("__name__") && !valid_label_name("a-b"));
    }

    #[test]
    fn values_are_escaped_so_a_namespace_cannot_break_out() {
        let q = scoped_query("up", "namespace", r#"a"} or up{x="y"#).unwrap();
        assert_eq!(q, r#"up{namespace="a\"} or up{x=\"y"}"#);
    }

    #[test]
    fn literals_need_no_scope_and_unparsable_queries_say_why() {
        assert_eq!(scoped("vector(1) + 2"), "vector(1) + 2");
        assert_eq!(scoped("time()"), "time()");
        let ScopeError::Parse(why) = refused("sum(rate(x[1m])") else { panic!("a parse error") };
        assert!(!why.is_empty());
        assert!(matches!(refused("x{"), ScopeError::Parse(_)));
        assert!(matches!(refused(""), ScopeError::Parse(_)));
        assert_eq!(refused("info(up)"), ScopeError::Unsupported("info()"));
        assert!(matches!(refused(r#"x{a="1" or b="2"}"#), ScopeError::Parse(_) | ScopeError::Unsupported(_)));
    }
}
