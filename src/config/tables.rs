//! `[[tables]]`: the named output datasets and the MQTT topic filters that feed them, compiled
//! into the router's rules (`decode::topic`).

use serde::{Deserialize, Serialize};

use super::{ConfigError, invalid, validate_name};
use crate::decode::topic::TableRule;

/// `[[tables]]`: a named output dataset and the topics that feed it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Table name (folder name in the output).
    pub name: String,
    /// MQTT filters, with named levels `{device_id}`, `{table}` or `{any_column}`.
    pub topics: Vec<String>,
    /// Payload fields tried, in order, for the row time.
    #[serde(default = "default_time_fields")]
    pub time_fields: Vec<String>,
}

pub(super) fn default_time_fields() -> Vec<String> {
    vec!["ts".into(), "time".into(), "timestamp".into()]
}

pub(super) fn validate_tables(raw: &[RawTable]) -> Result<Vec<TableRule>, ConfigError> {
    let mut rules = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let key = format!("tables[{i}]");
        validate_name(&format!("{key}.name"), &table.name, 64)?;
        if raw[..i].iter().any(|t| t.name == table.name) {
            return Err(invalid(
                format!("{key}.name"),
                format!("`{}` is defined twice", table.name),
            ));
        }
        if table.topics.is_empty() {
            return Err(invalid(
                format!("{key}.topics"),
                "needs at least one MQTT filter",
            ));
        }
        if table.time_fields.iter().any(|f| f.is_empty()) {
            return Err(invalid(
                format!("{key}.time_fields"),
                "names must not be empty",
            ));
        }
        for (j, filter) in table.topics.iter().enumerate() {
            let rule = TableRule::compile(&table.name, filter, &table.time_fields)
                .map_err(|m| invalid(format!("{key}.topics[{j}]"), m))?;
            rules.push(rule);
        }
    }
    Ok(rules)
}
