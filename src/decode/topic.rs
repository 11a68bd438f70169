//! Topic → table routing. Each `[[tables]]` entry compiles its MQTT filters into a
//! [`TableRule`]; filters may name levels: `{device_id}` sets the row's device id, `{table}`
//! picks the table from the topic, any other `{name}` becomes a string column. A [`Router`]
//! tries the rules in config order; the first match wins.

use std::sync::Arc;

/// One compiled topic filter of a table.
#[derive(Clone, Debug)]
pub struct TableRule {
    table: Arc<str>,
    levels: Vec<Level>,
    time_fields: Arc<[String]>,
    properties: Arc<[String]>,
}

#[derive(Clone, Debug, PartialEq)]
enum Level {
    Literal(String),
    Plus,
    Hash,
    DeviceId,
    Table,
    Column(Arc<str>),
}

/// Where a topic goes: the table, and values taken from named levels.
#[derive(Debug)]
pub struct Route<'t> {
    /// Destination table.
    pub table: Arc<str>,
    /// Device id from a `{device_id}` level.
    pub device_id: Option<&'t str>,
    /// `(column, value)` from other named levels.
    pub columns: Vec<(Arc<str>, &'t str)>,
    /// Payload fields tried for the row time.
    pub time_fields: Arc<[String]>,
    /// MQTT 5 properties the table keeps as columns.
    pub properties: Arc<[String]>,
}

/// Whether `name` is safe as a file or folder name: 1+ of `[A-Za-z0-9_.-]`, not starting with
/// `.` or `_` (a leading `_` is reserved for fleetlake's own tables such as `_rejected`).
pub fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['.', '_'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn is_column_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl TableRule {
    /// The same rule keeping these MQTT 5 properties as columns (`[[tables]] properties`).
    pub fn with_properties(mut self, properties: &[String]) -> Self {
        self.properties = properties.into();
        self
    }

    /// Compiles `filter` for `table`; the error says what is wrong with the filter.
    pub fn compile(table: &str, filter: &str, time_fields: &[String]) -> Result<Self, String> {
        if filter.is_empty() {
            return Err("an MQTT filter cannot be empty".into());
        }
        let parts: Vec<&str> = filter.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let level = match *part {
                "#" if i + 1 == parts.len() => Level::Hash,
                "#" => return Err(format!("`{filter}`: `#` must be the last level")),
                "+" => Level::Plus,
                p if p.contains(['#', '+']) => {
                    return Err(format!(
                        "`{filter}`: `{p}` mixes a wildcard with text in one level"
                    ));
                }
                p if p.starts_with('{') && p.ends_with('}') => {
                    let name = &p[1..p.len() - 1];
                    if !is_column_name(name) {
                        return Err(format!(
                            "`{filter}`: `{p}` must name a column: letters, digits, `_`"
                        ));
                    }
                    match name {
                        "device_id" => Level::DeviceId,
                        "table" => Level::Table,
                        "time" | "received_at" | "date" | "hour" => {
                            return Err(format!("`{filter}`: `{p}` is a reserved column name"));
                        }
                        other => Level::Column(Arc::from(other)),
                    }
                }
                p => Level::Literal(p.to_string()),
            };
            let named = matches!(level, Level::DeviceId | Level::Table | Level::Column(_));
            if named && levels.contains(&level) {
                return Err(format!("`{filter}`: `{part}` appears twice"));
            }
            levels.push(level);
        }
        Ok(Self {
            table: Arc::from(table),
            levels,
            time_fields: time_fields.to_vec().into(),
            properties: Arc::from([]),
        })
    }

    /// Matches a topic name; `Err` when it matches but a `{table}` level is not a valid name.
    fn route<'t>(&self, topic: &'t str) -> Option<Result<Route<'t>, String>> {
        let mut table = None;
        let mut device_id = None;
        let mut columns = Vec::new();
        let mut parts = topic.split('/');
        for (i, level) in self.levels.iter().enumerate() {
            if *level == Level::Hash {
                // `#` matches any rest, but not a `$` topic from the first level (MQTT 4.7.2).
                return (i > 0 || !topic.starts_with('$'))
                    .then(|| self.finish(table, device_id, columns));
            }
            let part = parts.next()?;
            if i == 0 && part.starts_with('$') && !matches!(level, Level::Literal(_)) {
                return None;
            }
            match level {
                Level::Literal(lit) if lit != part => return None,
                Level::Literal(_) | Level::Plus | Level::Hash => {}
                Level::DeviceId => device_id = Some(part),
                Level::Table => table = Some(part),
                Level::Column(name) => columns.push((name.clone(), part)),
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(self.finish(table, device_id, columns))
    }

    fn finish<'t>(
        &self,
        table: Option<&'t str>,
        device_id: Option<&'t str>,
        columns: Vec<(Arc<str>, &'t str)>,
    ) -> Result<Route<'t>, String> {
        let table = match table {
            None => self.table.clone(),
            Some(t) if is_safe_name(t) && t.len() <= 64 => Arc::from(t),
            Some(t) => return Err(format!("topic level `{t}` is not a valid table name")),
        };
        Ok(Route {
            table,
            device_id,
            columns,
            time_fields: self.time_fields.clone(),
            properties: self.properties.clone(),
        })
    }
}

/// Routes topics to tables by trying each rule in config order.
#[derive(Clone, Debug)]
pub struct Router {
    rules: Vec<TableRule>,
    /// `broker.route_only` filters: topics only delivered to subscribers, never stored as rows.
    route_only: Arc<[String]>,
}

impl Router {
    /// A router over `rules` (in priority order).
    pub fn new(rules: Vec<TableRule>) -> Self {
        Self {
            rules,
            route_only: Arc::from([]),
        }
    }

    /// Topics matching one of `filters` (valid MQTT filters) become no rows.
    pub fn with_route_only(mut self, filters: &[String]) -> Self {
        self.route_only = filters.into();
        self
    }

    /// Whether `topic` is only routed to subscribers (`broker.route_only`).
    pub fn is_route_only(&self, topic: &str) -> bool {
        self.route_only
            .iter()
            .any(|f| super::filter::matches(f, topic))
    }

    /// The first matching rule's route; `None` when no table takes the topic.
    pub fn route<'t>(&self, topic: &'t str) -> Option<Result<Route<'t>, String>> {
        self.rules.iter().find_map(|rule| rule.route(topic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(filter: &str) -> TableRule {
        TableRule::compile("t", filter, &["ts".to_string()]).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn hash_matches_every_topic_but_dollar_topics() {
        let r = rule("#");
        assert!(r.route("a").is_some());
        assert!(r.route("a/b/c").is_some());
        assert!(r.route("$SYS/x").is_none());
    }

    #[test]
    fn named_levels_capture_device_table_and_columns() {
        let r = rule("plant/{site}/{device_id}/{table}");
        let route = r
            .route("plant/north/th-1/climate")
            .and_then(Result::ok)
            .map(|r| {
                (
                    r.table.to_string(),
                    r.device_id.map(str::to_string),
                    r.columns.len(),
                )
            });
        assert_eq!(route, Some(("climate".into(), Some("th-1".into()), 1)));
        assert!(r.route("plant/north/th-1").is_none());
        assert!(r.route("plant/north/th-1/a/b").is_none());
    }

    #[test]
    fn invalid_table_level_is_an_error_not_a_match_failure() {
        let r = rule("s/{table}");
        assert!(matches!(r.route("s/_hidden"), Some(Err(_))));
    }

    #[test]
    fn hash_matches_the_parent_level_too() {
        assert!(rule("a/#").route("a").is_some());
        assert!(rule("a/+").route("a").is_none());
    }

    #[test]
    fn bad_filters_are_refused_with_a_reason() {
        for f in ["", "a/#/b", "a/b+", "{bad name}", "{time}", "{x}/{x}"] {
            assert!(TableRule::compile("t", f, &[]).is_err(), "{f}");
        }
    }

    #[test]
    fn router_takes_the_first_matching_rule() {
        let a = TableRule::compile("a", "x/#", &[]).unwrap_or_else(|e| panic!("{e}"));
        let b = TableRule::compile("b", "#", &[]).unwrap_or_else(|e| panic!("{e}"));
        let router = Router::new(vec![a, b]);
        let table = |t: &str| {
            router
                .route(t)
                .and_then(Result::ok)
                .map(|r| r.table.to_string())
        };
        assert_eq!(table("x/1"), Some("a".into()));
        assert_eq!(table("y/1"), Some("b".into()));
    }
}
