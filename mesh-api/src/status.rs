//! The status every mesh resource carries: Kubernetes-style conditions, of which
//! the controller writes [`CONDITION_ACCEPTED`].

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition type that says whether the controller accepted the resource.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// Reason of an `Accepted=True` condition.
pub const REASON_ACCEPTED: &str = "Accepted";
/// Reason of an `Accepted=False` condition caused by failed validation.
pub const REASON_INVALID: &str = "Invalid";

/// `status` subresource shared by every mesh CRD.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// Current conditions, at most one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Whether a condition holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// One observation about a resource, as in `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. [`CONDITION_ACCEPTED`].
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// Machine-readable CamelCase reason, e.g. [`REASON_INVALID`].
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Human-readable explanation (the validation errors when not accepted).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When the status last changed, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl MeshStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Inserts or replaces the condition of the same type. The transition time
    /// of an existing condition is kept when its status does not change, as
    /// Kubernetes conventions require.
    pub fn set_condition(&mut self, mut condition: Condition) {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                if existing.status == condition.status {
                    condition.last_transition_time = existing.last_transition_time.take();
                }
                *existing = condition;
            }
            None => self.conditions.push(condition),
        }
    }
}

impl Condition {
    /// An `Accepted` condition: `True` when `errors` is empty, otherwise `False`
    /// with the errors, one per line, as the message.
    pub fn accepted(
        errors: &[crate::validate::ValidationError],
        observed_generation: Option<i64>,
        now_rfc3339: &str,
    ) -> Self {
        let (status, reason, message) = if errors.is_empty() {
            (ConditionStatus::True, REASON_ACCEPTED, String::new())
        } else {
            let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            (ConditionStatus::False, REASON_INVALID, lines.join("\n"))
        };
        Self {
            type_: CONDITION_ACCEPTED.to_string(),
            status,
            reason: reason.to_string(),
            message,
            last_transition_time: Some(now_rfc3339.to_string()),
            observed_generation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::{ResourceRef, ValidationError};

    #[test]
    fn accepted_condition_keeps_transition_time_while_status_holds() {
        let error = ValidationError {
            resource: ResourceRef {
                kind: "VirtualService".into(),
                namespace: "default".into(),
                name: "r".into(),
            },
            field: "spec.hosts".into(),
            message: "at least one host is required".into(),
        };
        let mut status = MeshStatus::default();
        status.set_condition(Condition::accepted(&[], Some(1), "2026-01-01T00:00:00Z"));
        status.set_condition(Condition::accepted(&[], Some(2), "2026-01-02T00:00:00Z"));
        let c = status.condition(CONDITION_ACCEPTED).expect("set");
        assert_eq!(c.observed_generation, Some(2));
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-01-01T00:00:00Z")
        );

        status.set_condition(Condition::accepted(
            &[error],
            Some(3),
            "2026-01-03T00:00:00Z",
        ));
        let c = status.condition(CONDITION_ACCEPTED).expect("set");
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(c.status, ConditionStatus::False);
        assert_eq!(c.reason, REASON_INVALID);
        assert_eq!(
            c.message,
            "VirtualService default/r: spec.hosts: at least one host is required"
        );
        assert_eq!(
            c.last_transition_time.as_deref(),
            Some("2026-01-03T00:00:00Z")
        );
    }
}
