//! Label and field selectors, parsed and matched as kube-apiserver does: the `?labelSelector=` and
//! `?fieldSelector=` query parameters of list and watch, `metav1.LabelSelector` objects (Deployment
//! and ReplicaSet selectors) and `map[string]string` selectors (Service `.spec.selector`). Parse
//! errors carry kube-apiserver's wording so that `kubectl get -l ...` fails the way users expect.
//!
//! References (kubernetes/kubernetes):
//! - <https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apimachinery/pkg/labels/selector.go>
//! - <https://github.com/kubernetes/kubernetes/blob/master/staging/src/k8s.io/apimachinery/pkg/fields/selector.go>
//! - supported field labels: each resource's `ToSelectableFields` (e.g.
//!   <https://github.com/kubernetes/kubernetes/blob/master/pkg/registry/core/pod/strategy.go>) and the field label conversion functions in
//!   <https://github.com/kubernetes/kubernetes/blob/master/pkg/apis/core/v1/conversion.go>.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::k8s::apimachinery::pkg::apis::meta::v1 as metav1;
use crate::resources::ResourceInfo;
use crate::validation::{is_qualified_name, is_valid_label_value};

/// A selector that could not be parsed or that names something unsupported. The message is
/// kube-apiserver's (`unable to parse requirement: ...`, `field label not supported: ...`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    message: String,
}

impl SelectorError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The operator of one label requirement (`selection.Operator`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Equals,
    DoubleEquals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    GreaterThan,
    LessThan,
}

/// One `key op values` clause of a label selector. Construct through [`Requirement::new`], which
/// validates as `labels.NewRequirement` does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

/// `field.ErrorList.ToAggregate().Error()`: one message as is, several in brackets.
fn aggregate(errs: Vec<String>) -> Option<String> {
    match errs.len() {
        0 => None,
        1 => errs.into_iter().next(),
        _ => Some(format!("[{}]", errs.join(", "))),
    }
}

/// Go's `%#v` of a `[]string`, as field errors print bad values.
fn go_string_slice(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
    format!("[]string{{{}}}", quoted.join(", "))
}

impl Requirement {
    /// Validates and builds a requirement, as `labels.NewRequirement` does: In/NotIn need values,
    /// the equality operators exactly one, Exists/DoesNotExist none, Gt/Lt one integer; the key
    /// must be a qualified name and every value a label value.
    pub fn new(key: &str, operator: Operator, values: Vec<String>) -> Result<Self, SelectorError> {
        let mut errs = Vec::new();
        let key_errs = is_qualified_name(key);
        if !key_errs.is_empty() {
            errs.push(format!(
                "key: Invalid value: {key:?}: {}",
                key_errs.join("; ")
            ));
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => errs.push(format!(
                "values: Invalid value: {}: for 'in', 'notin' operators, values set can't be empty",
                go_nil_or_slice(&values)
            )),
            Operator::Equals | Operator::DoubleEquals | Operator::NotEquals if values.len() != 1 => {
                errs.push(format!(
                    "values: Invalid value: {}: exact-match compatibility requires one single value",
                    go_nil_or_slice(&values)
                ))
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => errs.push(format!(
                "values: Invalid value: {}: values set must be empty for exists and does not exist",
                go_string_slice(&values)
            )),
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 {
                    errs.push(format!(
                        "values: Invalid value: {}: for 'Gt', 'Lt' operators, exactly one value is required",
                        go_nil_or_slice(&values)
                    ));
                }
                for (i, v) in values.iter().enumerate() {
                    if v.parse::<i64>().is_err() {
                        errs.push(format!(
                            "values[{i}]: Invalid value: {v:?}: for 'Gt', 'Lt' operators, the value must be an integer"
                        ));
                    }
                }
            }
            _ => {}
        }
        for (i, v) in values.iter().enumerate() {
            let msgs = is_valid_label_value(v);
            if !msgs.is_empty() {
                errs.push(format!(
                    "values[{i}][{key}]: Invalid value: {v:?}: {}",
                    msgs.join("; ")
                ));
            }
        }
        match aggregate(errs) {
            Some(message) => Err(SelectorError::new(message)),
            None => Ok(Self {
                key: key.to_string(),
                operator,
                values,
            }),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn operator(&self) -> Operator {
        self.operator
    }

    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label set satisfies this requirement (`Requirement.Matches`): a missing key
    /// satisfies only NotIn, NotEquals and DoesNotExist.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In | Operator::Equals | Operator::DoubleEquals => {
                value.is_some_and(|v| self.values.iter().any(|x| x == v))
            }
            Operator::NotIn | Operator::NotEquals => {
                value.is_none_or(|v| !self.values.iter().any(|x| x == v))
            }
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(have), [want]) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values.as_slice(),
                ) else {
                    return false;
                };
                let Ok(want) = want.parse::<i64>() else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    have > want
                } else {
                    have < want
                }
            }
        }
    }
}

/// `[]string(nil)` for an empty list, as Go prints the nil slices these checks receive.
fn go_nil_or_slice(values: &[String]) -> String {
    if values.is_empty() {
        "[]string(nil)".to_string()
    } else {
        go_string_slice(values)
    }
}

impl fmt::Display for Requirement {
    /// `Requirement.String()`: `!key`, `key`, `key=v`, `key in (a,b)` with values sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.operator == Operator::DoesNotExist {
            f.write_str("!")?;
        }
        f.write_str(&self.key)?;
        let op = match self.operator {
            Operator::Equals => "=",
            Operator::DoubleEquals => "==",
            Operator::NotEquals => "!=",
            Operator::In => " in ",
            Operator::NotIn => " notin ",
            Operator::GreaterThan => ">",
            Operator::LessThan => "<",
            Operator::Exists | Operator::DoesNotExist => return Ok(()),
        };
        f.write_str(op)?;
        let set = matches!(self.operator, Operator::In | Operator::NotIn);
        if set {
            f.write_str("(")?;
        }
        let mut values = self.values.clone();
        values.sort();
        f.write_str(&values.join(","))?;
        if set {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// A label selector: the AND of its requirements. No requirements selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the string syntax of `?labelSelector=` (`a=b,c!=d,e in (f,g),!h,i`), as
    /// `labels.Parse` does.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s);
        let mut parser = Parser { tokens, pos: 0 };
        let mut requirements = parser.parse()?;
        // kube-apiserver sorts by key so that the canonical string is deterministic.
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// The selector that matches every label set.
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Converts a `metav1.LabelSelector` as `metav1.LabelSelectorAsSelector` does: matchLabels
    /// become equality requirements, matchExpressions In/NotIn/Exists/DoesNotExist; an empty
    /// selector matches everything. (A *missing* selector matches nothing in Kubernetes; callers
    /// holding an `Option` must handle `None` themselves.)
    pub fn from_metav1(sel: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            requirements.push(Requirement::new(k, Operator::Equals, vec![v.clone()])?);
        }
        for expr in sel.match_expressions.iter().flatten() {
            let op = match expr.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::new(format!(
                        "{other:?} is not a valid label selector operator"
                    )))
                }
            };
            requirements.push(Requirement::new(
                &expr.key,
                op,
                expr.values.clone().unwrap_or_default(),
            )?);
        }
        requirements.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self { requirements })
    }

    /// The selector of a `map[string]string` (Service `.spec.selector`, `labels.SelectorFromSet`):
    /// every pair must match exactly. An empty map yields [`LabelSelector::everything`]; note that
    /// a Service without a selector gets no managed endpoints, which callers decide separately.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        let requirements = map
            .iter()
            .map(|(k, v)| Requirement {
                key: k.clone(),
                operator: Operator::Equals,
                values: vec![v.clone()],
            })
            .collect();
        Self { requirements }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.requirements.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join(","))
    }
}

/// `metadata.labels` of an object (empty when absent; non-string values are ignored).
pub fn labels_of(obj: &Value) -> BTreeMap<String, String> {
    obj.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Label selector lexer and parser, a transcription of the state machine in labels/selector.go so
// that the same inputs fail with the same messages.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    Error,
    End,
    ClosedPar,
    Comma,
    DoesNotExist,
    DoubleEquals,
    Equals,
    GreaterThan,
    Identifier,
    In,
    LessThan,
    NotEquals,
    NotIn,
    OpenPar,
}

fn keyword(s: &str) -> Option<Tok> {
    Some(match s {
        ")" => Tok::ClosedPar,
        "," => Tok::Comma,
        "!" => Tok::DoesNotExist,
        "==" => Tok::DoubleEquals,
        "=" => Tok::Equals,
        ">" => Tok::GreaterThan,
        "in" => Tok::In,
        "<" => Tok::LessThan,
        "!=" => Tok::NotEquals,
        "notin" => Tok::NotIn,
        "(" => Tok::OpenPar,
        _ => return None,
    })
}

fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

fn is_special(b: u8) -> bool {
    matches!(b, b'=' | b'!' | b'(' | b')' | b',' | b'>' | b'<')
}

fn lex(s: &str) -> Vec<(Tok, String)> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut out = Vec::new();
    loop {
        while pos < bytes.len() && is_whitespace(bytes[pos]) {
            pos += 1;
        }
        if pos >= bytes.len() {
            out.push((Tok::End, String::new()));
            return out;
        }
        if is_special(bytes[pos]) {
            // The longest operator that is a prefix of the run of special symbols.
            let mut buffer = Vec::new();
            let mut last: Option<(Tok, String)> = None;
            while pos < bytes.len() && is_special(bytes[pos]) {
                buffer.push(bytes[pos]);
                let text = String::from_utf8_lossy(&buffer).into_owned();
                if let Some(tok) = keyword(&text) {
                    last = Some((tok, text));
                    pos += 1;
                } else if last.is_some() {
                    break;
                } else {
                    pos += 1;
                }
            }
            match last {
                Some(item) => out.push(item),
                None => out.push((
                    Tok::Error,
                    format!(
                        "error expected: keyword found '{}'",
                        String::from_utf8_lossy(&buffer)
                    ),
                )),
            }
        } else {
            let start = pos;
            while pos < bytes.len() && !is_special(bytes[pos]) && !is_whitespace(bytes[pos]) {
                pos += 1;
            }
            let text = String::from_utf8_lossy(&bytes[start..pos]).into_owned();
            let tok = keyword(&text).unwrap_or(Tok::Identifier);
            out.push((tok, text));
        }
    }
}

struct Parser {
    tokens: Vec<(Tok, String)>,
    pos: usize,
}

impl Parser {
    /// In a value context the keywords `in`/`notin` are plain identifiers (`x in (in)`).
    fn as_value(tok: Tok) -> Tok {
        match tok {
            Tok::In | Tok::NotIn => Tok::Identifier,
            t => t,
        }
    }

    fn lookahead(&self, values: bool) -> (Tok, String) {
        let (tok, lit) = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or((Tok::End, String::new()));
        (if values { Self::as_value(tok) } else { tok }, lit)
    }

    fn consume(&mut self, values: bool) -> (Tok, String) {
        let item = self.lookahead(values);
        self.pos += 1;
        item
    }

    fn parse(&mut self) -> Result<Vec<Requirement>, SelectorError> {
        let mut requirements = Vec::new();
        loop {
            let (tok, lit) = self.lookahead(true);
            match tok {
                Tok::Identifier | Tok::DoesNotExist => {
                    let r = self.parse_requirement().map_err(|e| {
                        SelectorError::new(format!("unable to parse requirement: {}", e.message))
                    })?;
                    requirements.push(r);
                    let (t, l) = self.consume(true);
                    match t {
                        Tok::End => return Ok(requirements),
                        Tok::Comma => {
                            let (t2, l2) = self.lookahead(true);
                            if t2 != Tok::Identifier && t2 != Tok::DoesNotExist {
                                return Err(SelectorError::new(format!(
                                    "found '{l2}', expected: identifier after ','"
                                )));
                            }
                        }
                        _ => {
                            return Err(SelectorError::new(format!(
                                "found '{l}', expected: ',' or 'end of string'"
                            )))
                        }
                    }
                }
                Tok::End => return Ok(requirements),
                _ => {
                    return Err(SelectorError::new(format!(
                        "found '{lit}', expected: !, identifier, or 'end of string'"
                    )))
                }
            }
        }
    }

    fn parse_requirement(&mut self) -> Result<Requirement, SelectorError> {
        let (key, op) = self.parse_key_and_infer_operator()?;
        if let Some(op @ (Operator::Exists | Operator::DoesNotExist)) = op {
            return Requirement::new(&key, op, Vec::new());
        }
        let op = self.parse_operator()?;
        let values = match op {
            Operator::In | Operator::NotIn => self.parse_values()?,
            _ => self.parse_exact_value()?,
        };
        // sets.String.List(): de-duplicated and sorted.
        Requirement::new(&key, op, values.into_iter().collect())
    }

    fn parse_key_and_infer_operator(
        &mut self,
    ) -> Result<(String, Option<Operator>), SelectorError> {
        let mut op = None;
        let (mut tok, mut lit) = self.consume(true);
        if tok == Tok::DoesNotExist {
            op = Some(Operator::DoesNotExist);
            (tok, lit) = self.consume(true);
        }
        if tok != Tok::Identifier {
            return Err(SelectorError::new(format!(
                "found '{lit}', expected: identifier"
            )));
        }
        let errs = is_qualified_name(&lit);
        if !errs.is_empty() {
            // The parser validates keys with a nil field path, which Go prints as `<nil>`.
            return Err(SelectorError::new(format!(
                "<nil>: Invalid value: {lit:?}: {}",
                errs.join("; ")
            )));
        }
        let (next, _) = self.lookahead(true);
        if (next == Tok::End || next == Tok::Comma) && op != Some(Operator::DoesNotExist) {
            op = Some(Operator::Exists);
        }
        Ok((lit, op))
    }

    fn parse_operator(&mut self) -> Result<Operator, SelectorError> {
        let (tok, lit) = self.consume(false);
        Ok(match tok {
            Tok::In => Operator::In,
            Tok::Equals => Operator::Equals,
            Tok::DoubleEquals => Operator::DoubleEquals,
            Tok::GreaterThan => Operator::GreaterThan,
            Tok::LessThan => Operator::LessThan,
            Tok::NotIn => Operator::NotIn,
            Tok::NotEquals => Operator::NotEquals,
            _ => {
                return Err(SelectorError::new(format!(
                    "found '{lit}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        })
    }

    fn parse_values(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, lit) = self.consume(true);
        if tok != Tok::OpenPar {
            return Err(SelectorError::new(format!("found '{lit}' expected: '('")));
        }
        let (tok, lit) = self.lookahead(true);
        match tok {
            Tok::Identifier | Tok::Comma => {
                let set = self.parse_identifiers_list()?;
                let (tok, _) = self.consume(true);
                if tok != Tok::ClosedPar {
                    return Err(SelectorError::new(format!("found '{lit}', expected: ')'")));
                }
                Ok(set)
            }
            Tok::ClosedPar => {
                self.consume(true);
                Ok(BTreeSet::from([String::new()]))
            }
            _ => Err(SelectorError::new(format!(
                "found '{lit}', expected: ',', ')' or identifier"
            ))),
        }
    }

    fn parse_identifiers_list(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let mut set = BTreeSet::new();
        loop {
            let (tok, lit) = self.consume(true);
            match tok {
                Tok::Identifier => {
                    set.insert(lit);
                    let (tok2, lit2) = self.lookahead(true);
                    match tok2 {
                        Tok::Comma => continue,
                        Tok::ClosedPar => return Ok(set),
                        _ => {
                            return Err(SelectorError::new(format!(
                                "found '{lit2}', expected: ',' or ')'"
                            )))
                        }
                    }
                }
                Tok::Comma => {
                    // `(,a)`, `(a,)` and `(a,,b)` all contain the empty value.
                    if set.is_empty() {
                        set.insert(String::new());
                    }
                    let (tok2, _) = self.lookahead(true);
                    if tok2 == Tok::ClosedPar {
                        set.insert(String::new());
                        return Ok(set);
                    }
                    if tok2 == Tok::Comma {
                        set.insert(String::new());
                    }
                }
                _ => {
                    return Err(SelectorError::new(format!(
                        "found '{lit}', expected: ',', or identifier"
                    )))
                }
            }
        }
    }

    fn parse_exact_value(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        let (tok, _) = self.lookahead(true);
        if tok == Tok::End || tok == Tok::Comma {
            return Ok(BTreeSet::from([String::new()]));
        }
        let (tok, lit) = self.consume(true);
        if tok == Tok::Identifier {
            return Ok(BTreeSet::from([lit]));
        }
        Err(SelectorError::new(format!(
            "found '{lit}', expected: identifier"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// Field selectors.

/// One `field=value` / `field!=value` term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    /// `!=` rather than `=`/`==`.
    pub negated: bool,
}

/// A field selector: the AND of its terms. No terms selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses `?fieldSelector=` (`f=v`, `f==v`, `f!=v`, comma-joined; `\,` `\=` `\\` escape
    /// values), as `fields.ParseSelector` does. Whitespace is significant, as in Kubernetes.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut parts = split_terms(s);
        parts.sort();
        let mut terms = Vec::new();
        for part in parts {
            if part.is_empty() {
                continue;
            }
            let Some((lhs, op, rhs)) = split_term(&part) else {
                return Err(SelectorError::new(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let value = unescape_field_value(rhs)?;
            terms.push(FieldTerm {
                field: lhs.to_string(),
                value,
                negated: op == "!=",
            });
        }
        Ok(Self { terms })
    }

    pub fn everything() -> Self {
        Self::default()
    }

    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn terms(&self) -> &[FieldTerm] {
        &self.terms
    }

    /// The value a `field=value` term pins `field` to, if any (`metadata.name=x` lets a watch or
    /// list read one key instead of scanning).
    pub fn requires_exact_match(&self, field: &str) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == field && !t.negated)
            .map(|t| t.value.as_str())
    }

    /// Rejects fields the resource cannot be selected by, with kube-apiserver's message
    /// `field label not supported: <field>`.
    pub fn validate_for(&self, resource: &ResourceInfo) -> Result<(), SelectorError> {
        for t in &self.terms {
            if !supported_field(resource, &t.field) {
                return Err(SelectorError::new(format!(
                    "field label not supported: {}",
                    t.field
                )));
            }
        }
        Ok(())
    }

    /// Whether an object satisfies every term. Missing fields compare as "" (so
    /// `spec.nodeName=` selects unscheduled pods); booleans and counts compare in their
    /// Kubernetes rendering (`false`, `0`).
    pub fn matches(&self, obj: &Value, resource: &ResourceInfo) -> bool {
        self.terms.iter().all(|t| {
            let have = field_value(obj, resource, &t.field).unwrap_or_default();
            (have == t.value) != t.negated
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .terms
            .iter()
            .map(|t| {
                format!(
                    "{}{}{}",
                    t.field,
                    if t.negated { "!=" } else { "=" },
                    escape_field_value(&t.value)
                )
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Splits on commas that are not backslash-escaped, keeping escapes for [`unescape_field_value`].
fn split_terms(s: &str) -> Vec<String> {
    if s.is_empty() {
        return Vec::new();
    }
    let mut terms = Vec::new();
    let mut current = String::new();
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            in_slash = false;
            current.push(c);
        } else if c == '\\' {
            in_slash = true;
            current.push(c);
        } else if c == ',' {
            terms.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    terms.push(current);
    terms
}

/// The first occurrence of `!=`, `==` or `=` (checked in that order at each position) splits a
/// term; field names cannot contain operators.
fn split_term(term: &str) -> Option<(&str, &str, &str)> {
    for (i, _) in term.char_indices() {
        let rest = &term[i..];
        for op in ["!=", "==", "="] {
            if rest.starts_with(op) {
                return Some((&term[..i], op, &term[i + op.len()..]));
            }
        }
    }
    None
}

fn unescape_field_value(s: &str) -> Result<String, SelectorError> {
    if !s.contains(['\\', ',', '=']) {
        return Ok(s.to_string());
    }
    let mut out = String::with_capacity(s.len());
    let mut in_slash = false;
    for c in s.chars() {
        if in_slash {
            match c {
                '\\' | ',' | '=' => out.push(c),
                _ => {
                    return Err(SelectorError::new(format!(
                        "invalid field selector: invalid escape sequence: \\{c}"
                    )))
                }
            }
            in_slash = false;
            continue;
        }
        match c {
            '\\' => in_slash = true,
            // Go prints the rune as its code point (`%v` of an int32).
            ',' | '=' => {
                return Err(SelectorError::new(format!(
                    "invalid field selector: unescaped character in value: {}",
                    c as u32
                )))
            }
            _ => out.push(c),
        }
    }
    if in_slash {
        return Err(SelectorError::new(
            "invalid field selector: invalid escape sequence: \\",
        ));
    }
    Ok(out)
}

fn escape_field_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '\\' | ',' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The resource-specific field labels beyond `metadata.name`/`metadata.namespace`, as the
/// field label conversion functions of kube-apiserver accept them.
fn specific_fields(resource: &ResourceInfo) -> &'static [&'static str] {
    match (resource.group, resource.kind) {
        ("", "Pod") => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        ("", "Service") => &["spec.type", "spec.clusterIP"],
        ("", "Event") => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ],
        ("", "Node") => &["spec.unschedulable"],
        // `name` is a historical alias kept by kube-apiserver for namespaces.
        ("", "Namespace") => &["status.phase", "name"],
        ("apps", "ReplicaSet") => &["status.replicas"],
        _ => &[],
    }
}

fn supported_field(resource: &ResourceInfo, field: &str) -> bool {
    if field == "metadata.name" || specific_fields(resource).contains(&field) {
        return true;
    }
    // Nodes and Namespaces have their own conversion functions in kube-apiserver, which do not
    // accept metadata.namespace; every other resource does.
    field == "metadata.namespace"
        && !matches!((resource.group, resource.kind), ("", "Node" | "Namespace"))
}

fn str_at(obj: &Value, pointer: &str) -> String {
    obj.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// The value of a field label for one object, rendered as kube-apiserver's `ToSelectableFields`
/// does; `None` for fields the resource does not expose.
pub fn field_value(obj: &Value, resource: &ResourceInfo, field: &str) -> Option<String> {
    if !supported_field(resource, field) {
        return None;
    }
    Some(match field {
        "metadata.name" | "name" => str_at(obj, "/metadata/name"),
        "metadata.namespace" => str_at(obj, "/metadata/namespace"),
        "spec.hostNetwork" | "spec.unschedulable" => {
            let pointer = format!("/{}", field.replace('.', "/"));
            obj.pointer(&pointer)
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
        }
        "status.replicas" => obj
            .pointer("/status/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        "status.podIP" => {
            let first = obj.pointer("/status/podIPs/0/ip").and_then(Value::as_str);
            first
                .map(str::to_string)
                .unwrap_or_else(|| str_at(obj, "/status/podIP"))
        }
        "reportingComponent" => str_at(obj, "/reportingComponent"),
        "source" => {
            let component = str_at(obj, "/source/component");
            if component.is_empty() {
                str_at(obj, "/reportingComponent")
            } else {
                component
            }
        }
        other => str_at(obj, &format!("/{}", other.replace('.', "/"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn res(group: &str, plural: &str) -> &'static ResourceInfo {
        find(group, "v1", plural).expect("served resource")
    }

    #[test]
    fn label_selector_syntax_is_parsed_and_matched_as_kubernetes_does() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            ("a=b", &[("a", "b")], true),
            ("a==b", &[("a", "b")], true),
            ("a!=b", &[("a", "c")], true),
            ("a!=b", &[], true),
            ("a!=b", &[("a", "b")], false),
            ("a in (x,y)", &[("a", "y")], true),
            ("a in (x,y)", &[("a", "z")], false),
            ("a notin (x)", &[], true),
            ("a notin (x)", &[("a", "x")], false),
            ("a", &[("a", "")], true),
            ("a", &[], false),
            ("!a", &[], true),
            ("!a", &[("a", "1")], false),
            ("  a = b ,  c  ", &[("a", "b"), ("c", "1")], true),
            ("a=b,c", &[("a", "b")], false),
            ("a>5", &[("a", "6")], true),
            ("a<5", &[("a", "6")], false),
            ("a=", &[("a", "")], true),
            ("x in (in)", &[("x", "in")], true),
            ("", &[("q", "r")], true),
        ];
        for (sel, set, want) in cases {
            let parsed = LabelSelector::parse(sel).unwrap_or_else(|e| panic!("{sel}: {e}"));
            assert_eq!(parsed.matches(&labels(set)), *want, "{sel} against {set:?}");
        }
    }

    #[test]
    fn invalid_label_selectors_fail_with_kubernetes_messages() {
        let cases = [
            ("a b", "unable to parse requirement: found 'b', expected: in, notin, =, ==, !=, gt, lt"),
            ("a=b c", "found 'c', expected: ',' or 'end of string'"),
            (",a", "found ',', expected: !, identifier, or 'end of string'"),
            ("a,", "found '', expected: identifier after ','"),
            ("a in x", "unable to parse requirement: found 'x' expected: '('"),
            (
                "-a=b",
                "unable to parse requirement: <nil>: Invalid value: \"-a\": name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')",
            ),
            (
                "a=b/c",
                "unable to parse requirement: values[0][a]: Invalid value: \"b/c\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')",
            ),
            ("a>b", "unable to parse requirement: values[0]: Invalid value: \"b\": for 'Gt', 'Lt' operators, the value must be an integer"),
        ];
        for (sel, want) in cases {
            let err = LabelSelector::parse(sel).expect_err(sel);
            assert_eq!(err.message(), want, "{sel}");
        }
    }

    #[test]
    fn label_selectors_render_canonically_sorted_by_key() {
        let sel = LabelSelector::parse("z in (b,a), !y, x, w!=v, u==t").expect("valid");
        assert_eq!(sel.to_string(), "u==t,w!=v,x,!y,z in (a,b)");
        assert!(LabelSelector::everything().is_everything());
        assert_eq!(LabelSelector::everything().to_string(), "");
    }

    #[test]
    fn metav1_selectors_convert_like_label_selector_as_selector() {
        let sel: metav1::LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["fe", "be"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .expect("valid LabelSelector");
        let s = LabelSelector::from_metav1(&sel).expect("convertible");
        assert_eq!(s.to_string(), "app=web,!canary,tier in (be,fe)");
        assert!(s.matches(&labels(&[("app", "web"), ("tier", "fe")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("tier", "fe"), ("canary", "1")])));

        let empty = LabelSelector::from_metav1(&metav1::LabelSelector::default()).expect("empty");
        assert!(empty.is_everything());

        let bad: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "Foo"}]}))
                .expect("json");
        assert_eq!(
            LabelSelector::from_metav1(&bad)
                .expect_err("bad op")
                .message(),
            "\"Foo\" is not a valid label selector operator"
        );
        let no_values: metav1::LabelSelector =
            serde_json::from_value(json!({"matchExpressions": [{"key": "a", "operator": "In"}]}))
                .expect("json");
        assert_eq!(
            LabelSelector::from_metav1(&no_values).expect_err("no values").message(),
            "values: Invalid value: []string(nil): for 'in', 'notin' operators, values set can't be empty"
        );
    }

    #[test]
    fn map_selectors_match_every_pair_and_empty_maps_match_everything() {
        let sel = LabelSelector::from_map(&labels(&[("app", "web"), ("tier", "fe")]));
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "fe"), ("x", "y")])));
        assert!(!sel.matches(&labels(&[("app", "web")])));
        assert_eq!(sel.to_string(), "app=web,tier=fe");
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_everything());
    }

    #[test]
    fn labels_are_read_from_metadata() {
        let obj = json!({"metadata": {"labels": {"a": "b"}}});
        assert_eq!(labels_of(&obj), labels(&[("a", "b")]));
        assert!(labels_of(&json!({})).is_empty());
    }

    #[test]
    fn field_selectors_parse_operators_and_escapes() {
        let sel =
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Running,metadata.name==a\\,b")
                .expect("valid");
        assert_eq!(sel.terms().len(), 3);
        assert_eq!(sel.requires_exact_match("metadata.name"), Some("a,b"));
        assert_eq!(
            sel.to_string(),
            "metadata.name=a\\,b,spec.nodeName=n1,status.phase!=Running"
        );
        assert!(FieldSelector::parse("").expect("empty").is_everything());
    }

    #[test]
    fn invalid_field_selectors_fail_with_kubernetes_messages() {
        assert_eq!(
            FieldSelector::parse("spec.nodeName")
                .expect_err("no op")
                .message(),
            "invalid selector: 'spec.nodeName'; can't understand 'spec.nodeName'"
        );
        assert_eq!(
            FieldSelector::parse("a=b=c")
                .expect_err("unescaped")
                .message(),
            "invalid field selector: unescaped character in value: 61"
        );
        assert_eq!(
            FieldSelector::parse("a=b\\x")
                .expect_err("escape")
                .message(),
            "invalid field selector: invalid escape sequence: \\x"
        );
    }

    #[test]
    fn unsupported_field_labels_are_rejected_per_resource() {
        let pods = res("", "pods");
        assert!(FieldSelector::parse("spec.nodeName=a,metadata.namespace=b")
            .expect("ok")
            .validate_for(pods)
            .is_ok());
        let err = FieldSelector::parse("spec.foo=a")
            .expect("ok")
            .validate_for(pods)
            .expect_err("unsupported");
        assert_eq!(err.message(), "field label not supported: spec.foo");
        let nodes = res("", "nodes");
        assert!(FieldSelector::parse("spec.unschedulable=true")
            .expect("ok")
            .validate_for(nodes)
            .is_ok());
        assert!(FieldSelector::parse("metadata.namespace=x")
            .expect("ok")
            .validate_for(nodes)
            .is_err());
        let services = res("", "services");
        assert!(FieldSelector::parse("spec.clusterIP!=None")
            .expect("ok")
            .validate_for(services)
            .is_ok());
        assert!(FieldSelector::parse("spec.nodeName=x")
            .expect("ok")
            .validate_for(services)
            .is_err());
        let events = res("", "events");
        assert!(
            FieldSelector::parse("involvedObject.name=x,reason=y,type=Normal")
                .expect("ok")
                .validate_for(events)
                .is_ok()
        );
        let rs = find("apps", "v1", "replicasets").expect("served");
        assert!(FieldSelector::parse("status.replicas=0")
            .expect("ok")
            .validate_for(rs)
            .is_ok());
        let ns = res("", "namespaces");
        assert!(FieldSelector::parse("status.phase=Active")
            .expect("ok")
            .validate_for(ns)
            .is_ok());
    }

    #[test]
    fn missing_fields_compare_as_empty_and_booleans_as_false() {
        let pods = res("", "pods");
        let unscheduled = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {}});
        let scheduled = json!({"metadata": {"name": "q"}, "spec": {"nodeName": "n1"}, "status": {"podIPs": [{"ip": "10.0.0.1"}]}});
        let sel = FieldSelector::parse("spec.nodeName=").expect("ok");
        assert!(sel.matches(&unscheduled, pods));
        assert!(!sel.matches(&scheduled, pods));
        assert!(FieldSelector::parse("spec.hostNetwork=false")
            .expect("ok")
            .matches(&unscheduled, pods));
        assert!(FieldSelector::parse("status.podIP=10.0.0.1")
            .expect("ok")
            .matches(&scheduled, pods));
        assert!(FieldSelector::parse("metadata.name!=p")
            .expect("ok")
            .matches(&scheduled, pods));

        let events = res("", "events");
        let ev = json!({"involvedObject": {"kind": "Pod"}, "reportingComponent": "kubelet"});
        assert!(
            FieldSelector::parse("source=kubelet,involvedObject.kind=Pod")
                .expect("ok")
                .matches(&ev, events)
        );
        let rs = find("apps", "v1", "replicasets").expect("served");
        assert!(FieldSelector::parse("status.replicas=0")
            .expect("ok")
            .matches(&json!({}), rs));
    }
}
