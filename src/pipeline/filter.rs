//! The filter step: keep (or drop) a record by a predicate on one field.
//!
//! Guarantee: never fails and never waits; a field of a type the predicate cannot compare does not match.
//! Precondition: the field's slot was resolved at build time.

use futures::future::LocalBoxFuture;

use super::{Processor, Record, StepError, StepOutcome};
use crate::codec::Value;

/// A field's value as text (enums by symbol, numbers in decimal), for `equals` and `in`.
pub(crate) fn text(v: &Value) -> Option<String> {
    Some(match v {
        Value::Str(s) | Value::Enum(s) | Value::Uuid(s) => s.to_string(),
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => i.to_string(),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimeMicros(l) => l.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Double(d) => d.to_string(),
        Value::Float(f) => f.to_string(),
        _ => return None,
    })
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) | Value::Date(i) | Value::TimeMillis(i) => Some(f64::from(*i)),
        Value::Long(l)
        | Value::TimestampMillis(l)
        | Value::TimestampMicros(l)
        | Value::TimeMicros(l) => Some(*l as f64),
        Value::Double(d) => Some(*d),
        Value::Float(f) => Some(f64::from(*f)),
        _ => None,
    }
}

/// Keep or drop by a predicate on one field.
pub struct Filter {
    pub(super) name: String,
    pub(super) slot: usize,
    pub(super) equals: Option<String>,
    pub(super) one_of: Option<Vec<String>>,
    pub(super) present: Option<bool>,
    /// gt, ge, lt, le
    pub(super) bounds: [Option<f64>; 4],
    pub(super) keep: bool,
}

impl Filter {
    fn matches(&self, v: &Value) -> bool {
        let present = !matches!(v, Value::Null);
        if self.present.is_some_and(|p| p != present) {
            return false;
        }
        if let Some(e) = &self.equals {
            if text(v).as_deref() != Some(e.as_str()) {
                return false;
            }
        }
        if let Some(set) = &self.one_of {
            if !text(v).is_some_and(|t| set.contains(&t)) {
                return false;
            }
        }
        let [gt, ge, lt, le] = self.bounds;
        if gt.is_some() || ge.is_some() || lt.is_some() || le.is_some() {
            let Some(n) = number(v) else { return false };
            if gt.is_some_and(|b| n <= b)
                || ge.is_some_and(|b| n < b)
                || lt.is_some_and(|b| n >= b)
                || le.is_some_and(|b| n > b)
            {
                return false;
            }
        }
        true
    }
}

impl Processor for Filter {
    fn name(&self) -> &str {
        &self.name
    }
    fn process<'a>(
        &'a self,
        rec: &'a mut Record,
    ) -> LocalBoxFuture<'a, Result<StepOutcome, StepError>> {
        let m = rec.values.get(self.slot).is_some_and(|v| self.matches(v));
        let out = if m == self.keep {
            StepOutcome::Passed
        } else {
            StepOutcome::Dropped
        };
        Box::pin(std::future::ready(Ok(out)))
    }
}
