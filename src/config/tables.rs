//! `[[tables]]`: the named output datasets and the MQTT topic filters that feed them, compiled
//! into the router's rules (`decode::topic`).

use serde::{Deserialize, Serialize};

use std::sync::Arc;

use super::{ConfigError, choice, invalid, validate_name};
use crate::columnar::{Declared, DeclaredColumn, Kind, UnknownFields};
use crate::decode::MAX_FIELD_NAME;
use crate::decode::topic::TableRule;

/// `[[tables]]`: a named output dataset and the topics that feed it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawTable {
    /// Table name (folder name in the output).
    pub name: String,
    /// MQTT filters, with named levels `{device_id}`, `{table}` or `{any_column}`; may be empty
    /// for a table that only declares columns (written over gRPC, or named by a `{table}` level).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Payload fields tried, in order, for the row time.
    #[serde(default = "default_time_fields")]
    pub time_fields: Vec<String>,
    /// Declared columns, in file order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub columns: Vec<RawColumn>,
    /// What a field no declared column takes does: `accept`, `reject` or `drop`.
    #[serde(default = "default_unknown_fields")]
    pub unknown_fields: String,
    /// `strict = true` is `unknown_fields = "reject"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    /// MQTT 5 PUBLISH properties kept as string columns (see `decode::PROPERTY_COLUMNS`):
    /// `content_type`, `response_topic`, `correlation_data` (hex), `payload_format`,
    /// `message_expiry`, `user` (each user property as `user_<key>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub properties: Vec<String>,
}

/// `[[tables]] columns = [{ name, type, required, from }]`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawColumn {
    /// Column name.
    pub name: String,
    /// `float64`, `int64`, `bool`, `string`, `timestamp` or `binary`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Every row must hold a non-null value for it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// The payload field it is read from (a flattened path such as `a.b`), when not `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

pub(super) fn default_unknown_fields() -> String {
    "accept".into()
}

/// The declarations of `[[tables]]` that declare anything (columns, or a policy for other
/// fields).
pub(super) fn validate_declared(raw: &[RawTable]) -> Result<Vec<Declared>, ConfigError> {
    let mut declared = Vec::new();
    for (i, table) in raw.iter().enumerate() {
        let key = format!("tables[{i}]");
        let mut unknown_fields: UnknownFields =
            choice(&format!("{key}.unknown_fields"), &table.unknown_fields)?;
        match (table.strict, unknown_fields) {
            (Some(true), UnknownFields::Accept) => unknown_fields = UnknownFields::Reject,
            (Some(true), UnknownFields::Drop) => {
                return Err(invalid(
                    format!("{key}.strict"),
                    "contradicts unknown_fields = \"drop\" (strict = true is unknown_fields = \"reject\")",
                ));
            }
            _ => {}
        }
        if unknown_fields != UnknownFields::Accept && table.columns.is_empty() {
            return Err(invalid(
                format!("{key}.unknown_fields"),
                "needs `columns`: with no declared column every field would be unknown",
            ));
        }
        let mut columns: Vec<DeclaredColumn> = Vec::with_capacity(table.columns.len());
        for (j, c) in table.columns.iter().enumerate() {
            let key = format!("{key}.columns[{j}]");
            column_name(&format!("{key}.name"), &c.name)?;
            let kind: Kind = choice(&format!("{key}.type"), &c.kind)?;
            if columns.iter().any(|d| *d.name == *c.name) {
                return Err(invalid(
                    format!("{key}.name"),
                    format!("`{}` is declared twice", c.name),
                ));
            }
            let from = match &c.from {
                Some(f) => {
                    column_name(&format!("{key}.from"), f)?;
                    if columns
                        .iter()
                        .any(|d| d.from.as_deref() == Some(f.as_str()))
                    {
                        return Err(invalid(
                            format!("{key}.from"),
                            format!("`{f}` is read by two columns"),
                        ));
                    }
                    Some(Arc::from(f.as_str()))
                }
                None => None,
            };
            columns.push(DeclaredColumn {
                name: Arc::from(c.name.as_str()),
                kind,
                required: c.required,
                from,
            });
        }
        if !columns.is_empty() {
            declared.push(Declared {
                table: table.name.clone(),
                columns,
                unknown_fields,
            });
        }
    }
    Ok(declared)
}

/// A declared column or field name: 1 to 256 bytes, not one of the columns every row has.
fn column_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > MAX_FIELD_NAME {
        return Err(invalid(key, format!("must be 1 to {MAX_FIELD_NAME} bytes")));
    }
    if ["time", "received_at", "device_id", "date", "hour"].contains(&name) {
        return Err(invalid(
            key,
            format!(
                "`{name}` is a column every row has (a payload field of that name is stored as `payload_{name}`)"
            ),
        ));
    }
    Ok(())
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
        if table.topics.is_empty() && table.columns.is_empty() {
            return Err(invalid(
                format!("{key}.topics"),
                "needs at least one MQTT filter (or `columns`, for a table that only declares its schema)",
            ));
        }
        if table.time_fields.iter().any(|f| f.is_empty()) {
            return Err(invalid(
                format!("{key}.time_fields"),
                "names must not be empty",
            ));
        }
        for (j, p) in table.properties.iter().enumerate() {
            if !crate::decode::PROPERTY_COLUMNS.contains(&p.as_str()) {
                return Err(invalid(
                    format!("{key}.properties[{j}]"),
                    format!(
                        "`{p}` is not one of {}",
                        crate::decode::PROPERTY_COLUMNS.join(", ")
                    ),
                ));
            }
        }
        for (j, filter) in table.topics.iter().enumerate() {
            let rule = TableRule::compile(&table.name, filter, &table.time_fields)
                .map_err(|m| invalid(format!("{key}.topics[{j}]"), m))?
                .with_properties(&table.properties);
            rules.push(rule);
        }
    }
    Ok(rules)
}
