//! Job acceptance: may a scope take this job order? Pure, no I/O: it lists
//! what the order requires; the store answers which of it is unknown.

use super::store::ResourceKind;
use serde_json::Value;

/// Which acceptance checks run. All on by default; each can be switched off
/// (MicroDCS deployments that never push some configuration kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// `EquipmentRequirements[].ID` must be configured.
    pub equipment: bool,
    /// `MaterialRequirements[].MaterialClassID` must be configured.
    pub material_class: bool,
    /// `MaterialRequirements[].MaterialDefinitionID` must be configured.
    pub material_definition: bool,
    /// `PersonnelRequirements[].ID` must be configured.
    pub personnel: bool,
    /// `PhysicalAssetRequirements[].ID` must be configured.
    pub physical_asset: bool,
    /// `WorkMasterID[].ID` must be a stored work master.
    pub work_master: bool,
    /// The live-job limit applies.
    pub limit: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            equipment: true,
            material_class: true,
            material_definition: true,
            personnel: true,
            physical_asset: true,
            work_master: true,
            limit: true,
        }
    }
}

impl Checks {
    fn enabled(&self, kind: ResourceKind) -> bool {
        match kind {
            ResourceKind::Equipment => self.equipment,
            ResourceKind::MaterialClass => self.material_class,
            ResourceKind::MaterialDefinition => self.material_definition,
            ResourceKind::Personnel => self.personnel,
            ResourceKind::PhysicalAsset => self.physical_asset,
            ResourceKind::WorkMaster => self.work_master,
        }
    }
}

/// The resources a job order (normalised, PascalCase JSON) requires, for the
/// enabled checks, without duplicates, in document order.
pub fn requirements(order: &Value, checks: &Checks) -> Vec<(ResourceKind, String)> {
    let lists: [(&str, &str, ResourceKind); 6] = [
        ("EquipmentRequirements", "ID", ResourceKind::Equipment),
        (
            "MaterialRequirements",
            "MaterialClassID",
            ResourceKind::MaterialClass,
        ),
        (
            "MaterialRequirements",
            "MaterialDefinitionID",
            ResourceKind::MaterialDefinition,
        ),
        ("PersonnelRequirements", "ID", ResourceKind::Personnel),
        (
            "PhysicalAssetRequirements",
            "ID",
            ResourceKind::PhysicalAsset,
        ),
        ("WorkMasterID", "ID", ResourceKind::WorkMaster),
    ];
    let mut out: Vec<(ResourceKind, String)> = Vec::new();
    for (list, field, kind) in lists {
        if !checks.enabled(kind) {
            continue;
        }
        let items = order
            .get(list)
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for item in items {
            if let Some(id) = item.get(field).and_then(Value::as_str) {
                if !out.iter().any(|(k, i)| *k == kind && i == id) {
                    out.push((kind, id.to_owned()));
                }
            }
        }
    }
    out
}

/// Whether a new job may be added with `live` live jobs and `limit` (0 or
/// none: unlimited).
pub fn within_limit(live: u64, limit: Option<u64>) -> bool {
    match limit {
        None | Some(0) => true,
        Some(n) => live < n,
    }
}

/// A human-readable reason for refusing an order over unknown resources.
pub fn describe_unknown(unknown: &[(ResourceKind, String)]) -> String {
    let parts: Vec<String> = unknown
        .iter()
        .map(|(k, id)| format!("{} '{id}'", k.as_str()))
        .collect();
    format!("unknown in this scope: {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order() -> Value {
        json!({
            "JobOrderID": "j1",
            "WorkMasterID": [{"ID": "wm-1"}],
            "EquipmentRequirements": [{"ID": "press-1"}, {"ID": "press-1"}],
            "MaterialRequirements": [{"MaterialClassID": "steel", "MaterialDefinitionID": "s235"}, {"MaterialDefinitionID": "bolt-m8"}],
            "PersonnelRequirements": [{"ID": "operator"}],
            "PhysicalAssetRequirements": [{"ID": "fixture-7"}]
        })
    }

    #[test]
    fn lists_every_requirement_once() {
        let r = requirements(&order(), &Checks::default());
        let ids: Vec<&str> = r.iter().map(|(_, i)| i.as_str()).collect();
        assert_eq!(
            ids,
            [
                "press-1",
                "steel",
                "s235",
                "bolt-m8",
                "operator",
                "fixture-7",
                "wm-1"
            ]
        );
    }

    #[test]
    fn disabled_checks_are_skipped() {
        let checks = Checks {
            equipment: false,
            work_master: false,
            ..Checks::default()
        };
        let r = requirements(&order(), &checks);
        assert!(r
            .iter()
            .all(|(k, _)| !matches!(k, ResourceKind::Equipment | ResourceKind::WorkMaster)));
        assert_eq!(r.len(), 5);
    }

    #[test]
    fn limit_zero_is_unlimited() {
        assert!(within_limit(1000, Some(0)));
        assert!(within_limit(1000, None));
        assert!(within_limit(1, Some(2)));
        assert!(!within_limit(2, Some(2)));
    }
}
