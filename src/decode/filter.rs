//! Topic filters of SUBSCRIBE and UNSUBSCRIBE (MQTT 3.1.1 §4.7, MQTT 5 §4.7–4.8): what a valid
//! filter is, whether a topic matches one, and the shared form `$share/{group}/{filter}`.
//! Pure functions, used by the broker (subscriptions, retained messages) and by routing
//! (`broker.route_only`).

/// Why a topic filter is refused (the SUBACK gets a failure code; the connection stays).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Zero bytes long.
    #[error("empty topic filter")]
    Empty,
    /// `#` is not alone in the last level.
    #[error("`#` must be the whole last level")]
    Hash,
    /// `+` shares a level with other characters.
    #[error("`+` must be a whole level")]
    Plus,
    /// `$share/` without a group name, or a group name with a wildcard, or no filter after it.
    #[error("a shared subscription is `$share/{{group}}/{{filter}}`, the group without `+` or `#`")]
    Shared,
    /// Longer than `broker.max_filter_len`.
    #[error("topic filter longer than broker.max_filter_len")]
    TooLong,
    /// Holds U+0000 (MQTT 5 §1.5.4).
    #[error("topic filter holds U+0000")]
    Nul,
}

/// A filter split into its shared-subscription group (if any) and the filter proper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The group of `$share/{group}/…`.
    pub group: Option<&'a str>,
    /// The filter matched against topics.
    pub filter: &'a str,
}

/// Checks `s` as a SUBSCRIBE filter of at most `max_len` bytes.
pub fn parse(s: &str, max_len: usize) -> Result<Parsed<'_>, FilterError> {
    if s.is_empty() {
        return Err(FilterError::Empty);
    }
    if s.len() > max_len {
        return Err(FilterError::TooLong);
    }
    if s.contains('\0') {
        return Err(FilterError::Nul);
    }
    let parsed = match s.strip_prefix("$share/") {
        Some(rest) => {
            let (group, filter) = rest.split_once('/').ok_or(FilterError::Shared)?;
            if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
                return Err(FilterError::Shared);
            }
            Parsed {
                group: Some(group),
                filter,
            }
        }
        None => Parsed {
            group: None,
            filter: s,
        },
    };
    check_levels(parsed.filter)?;
    Ok(parsed)
}

fn check_levels(filter: &str) -> Result<(), FilterError> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::Hash);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::Plus);
        }
    }
    Ok(())
}

/// Whether `topic` matches the (valid, unshared) `filter`. A topic starting with `$` is not
/// matched by a filter starting with a wildcard (MQTT 3.1.1 §4.7.2).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    #[test]
    fn valid_and_invalid_filters_follow_the_spec() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#", "+/#",
        ] {
            assert!(parse(ok, MAX).is_ok(), "{ok}");
        }
        assert_eq!(parse("", MAX), Err(FilterError::Empty));
        assert_eq!(parse("a/#/b", MAX), Err(FilterError::Hash));
        assert_eq!(parse("a#", MAX), Err(FilterError::Hash));
        assert_eq!(parse("a/b#", MAX), Err(FilterError::Hash));
        assert_eq!(parse("a+/b", MAX), Err(FilterError::Plus));
        assert_eq!(parse("a/+b", MAX), Err(FilterError::Plus));
        assert_eq!(parse("a\0b", MAX), Err(FilterError::Nul));
        assert_eq!(parse(&"a".repeat(MAX + 1), MAX), Err(FilterError::TooLong));
    }

    #[test]
    fn shared_filters_name_a_group() {
        let p = parse("$share/g1/sensors/+/temp", MAX).expect("valid");
        assert_eq!(p.group, Some("g1"));
        assert_eq!(p.filter, "sensors/+/temp");
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g+/a",
            "$share/#/a",
            "$share/g/",
        ] {
            assert_eq!(parse(bad, MAX), Err(FilterError::Shared), "{bad}");
        }
        assert_eq!(parse("$share/g/a/#/b", MAX), Err(FilterError::Hash));
    }

    #[test]
    fn wildcards_match_levels() {
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(matches("a/+", "a/b"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/+", "a"));
        assert!(matches("a/+", "a/"), "an empty level is a level");
        assert!(matches("a/#", "a"), "`#` also matches the parent level");
        assert!(matches("a/#", "a/b/c"));
        assert!(matches("#", "a/b"));
        assert!(matches("+/+", "/a"));
        assert!(matches("+/b/#", "x/b"));
        assert!(!matches("a/b", "a/c"));
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        assert!(!matches("#", "$SYS/broker"));
        assert!(!matches("+/broker", "$SYS/broker"));
        assert!(matches("$SYS/#", "$SYS/broker"));
        assert!(matches("$SYS/+", "$SYS/broker"));
    }
}
