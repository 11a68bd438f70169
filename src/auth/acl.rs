//! Mosquitto `acl_file`s: `topic [read|write|readwrite|deny] <filter>` lines apply to the user
//! named by the last `user <name>` line (before any: to clients without a user name);
//! `pattern [access] <filter>` lines apply to every client, with `%c` replaced by its client id
//! and `%u` by its user name. Access defaults to `readwrite`. A topic is writable when some rule
//! of the client grants write (`write` or `readwrite`) and no rule of the client with `deny`
//! matches it (deny wins, as in Mosquitto 2); readable likewise with `read` or `readwrite`. No
//! matching rule: denied. A SUBSCRIBE filter is checked like a topic whose `+` and `#` are
//! plain text (as Mosquitto does): `topic read sensors/#` allows subscribing to
//! `sensors/+/temp`, not to `#`; every delivery is checked again against its own topic, so a
//! `deny` rule inside a granted filter still holds.
//!
//! Matching is level by level and allocates nothing: a `%c`/`%u` is compared in place, so a
//! client id containing `/`, `+` or `#` can never widen a pattern.

use std::collections::HashMap;

use super::passwd::ParseError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    ClientId,
    Username,
}

#[derive(Debug, PartialEq, Eq)]
enum Level {
    /// Plain text (no `%c`/`%u`).
    Literal(String),
    /// Text with substitutions (patterns only).
    Template(Vec<Piece>),
    Plus,
    Hash,
}

#[derive(Debug)]
struct Rule {
    access: Access,
    levels: Vec<Level>,
}

/// A parsed ACL file.
#[derive(Debug, Default)]
pub struct Acl {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

/// Who is publishing.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// MQTT client id.
    pub client_id: &'a str,
    /// Authenticated user name, if any.
    pub username: Option<&'a str>,
}

impl Acl {
    /// Parses the text of an ACL file.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut acl = Self::default();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| ParseError {
                line: i + 1,
                message,
            };
            let (keyword, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
            let rest = rest.trim_start();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a name".into()));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (access, filter) = match rest.split_once([' ', '\t']) {
                        Some(("read", f)) => (Access::Read, f.trim_start()),
                        Some(("write", f)) => (Access::Write, f.trim_start()),
                        Some(("readwrite", f)) => (Access::ReadWrite, f.trim_start()),
                        Some(("deny", f)) => (Access::Deny, f.trim_start()),
                        _ => (Access::ReadWrite, rest),
                    };
                    let levels = compile(filter, keyword == "pattern")
                        .map_err(|m| err(format!("`{filter}`: {m}")))?;
                    let rule = Rule { access, levels };
                    match (keyword, &user) {
                        ("pattern", _) => acl.patterns.push(rule),
                        (_, Some(u)) => acl.users.entry(u.clone()).or_default().push(rule),
                        (_, None) => acl.anonymous.push(rule),
                    }
                }
                other => {
                    return Err(err(format!(
                        "unknown keyword `{other}` (expected user, topic or pattern)"
                    )));
                }
            }
        }
        Ok(acl)
    }

    /// Whether `client` may publish to `topic`.
    pub fn may_write(&self, client: Client<'_>, topic: &str) -> bool {
        self.grants(client, topic, true)
    }

    /// Whether `client` may receive `topic` (or subscribe to a filter, taken literally).
    pub fn may_read(&self, client: Client<'_>, topic: &str) -> bool {
        self.grants(client, topic, false)
    }

    fn grants(&self, client: Client<'_>, topic: &str, write: bool) -> bool {
        let own: &[Rule] = match client.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let mut granted = false;
        for rule in own.iter().chain(&self.patterns) {
            if !matches(&rule.levels, topic, client) {
                continue;
            }
            match rule.access {
                Access::Deny => return false,
                Access::ReadWrite => granted = true,
                Access::Write => granted |= write,
                Access::Read => granted |= !write,
            }
        }
        granted
    }
}

fn compile(filter: &str, pattern: bool) -> Result<Vec<Level>, String> {
    if filter.is_empty() {
        return Err("empty topic filter".into());
    }
    let parts: Vec<&str> = filter.split('/').collect();
    let mut levels = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        levels.push(match *part {
            "#" if i + 1 == parts.len() => Level::Hash,
            "#" => return Err("`#` must be the last level".into()),
            "+" => Level::Plus,
            p if p.contains(['+', '#']) => return Err(format!("`{p}` mixes a wildcard with text")),
            p if pattern && (p.contains("%c") || p.contains("%u")) => Level::Template(pieces(p)),
            p => Level::Literal(p.to_string()),
        });
    }
    Ok(levels)
}

fn pieces(level: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut rest = level;
    while let Some(i) = rest.find('%') {
        let (sub, after) = match rest.get(i + 1..i + 2) {
            Some("c") => (Some(Piece::ClientId), &rest[i + 2..]),
            Some("u") => (Some(Piece::Username), &rest[i + 2..]),
            _ => (None, &rest[i + 1..]),
        };
        text.push_str(&rest[..i]);
        match sub {
            Some(piece) => {
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(piece);
            }
            None => text.push('%'),
        }
        rest = after;
    }
    text.push_str(rest);
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

/// Whether the topic level `level` equals the template with `client` substituted.
fn template_matches(pieces: &[Piece], mut level: &str, client: Client<'_>) -> bool {
    for piece in pieces {
        let want = match piece {
            Piece::Text(t) => t.as_str(),
            Piece::ClientId => client.client_id,
            Piece::Username => match client.username {
                Some(u) => u,
                None => return false,
            },
        };
        if want.is_empty() && !matches!(piece, Piece::Text(_)) {
            return false;
        }
        match level.strip_prefix(want) {
            Some(rest) => level = rest,
            None => return false,
        }
    }
    level.is_empty()
}

fn matches(levels: &[Level], topic: &str, client: Client<'_>) -> bool {
    let mut parts = topic.split('/');
    for (i, level) in levels.iter().enumerate() {
        // MQTT 4.7.2: wildcards in the first level do not match topics starting with `$`.
        let dollar = i == 0 && topic.starts_with('$');
        match level {
            Level::Hash => return !dollar,
            Level::Plus => {
                if dollar || parts.next().is_none() {
                    return false;
                }
            }
            Level::Literal(text) => {
                if parts.next() != Some(text.as_str()) {
                    return false;
                }
            }
            Level::Template(pieces) => match parts.next() {
                Some(part) if template_matches(pieces, part, client) => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c<'a>(client_id: &'a str, username: Option<&'a str>) -> Client<'a> {
        Client {
            client_id,
            username,
        }
    }

    const ACL: &str = "
# anonymous clients
topic write public/#
topic read  news/#

user gateway-7
topic write sensors/+/telemetry
topic deny sensors/secret/telemetry

user reader
topic read sensors/#

pattern write sensors/%c/#
pattern write users/%u/data
pattern readwrite fw/dev-%c-%u
";

    #[test]
    fn mosquitto_rules() {
        let acl = Acl::parse(ACL).expect("parse");
        let anon = c("dev-1", None);
        assert!(acl.may_write(anon, "public/x/y"));
        assert!(!acl.may_write(anon, "news/today"), "read is not write");
        assert!(acl.may_write(anon, "sensors/dev-1/telemetry"), "%c pattern");
        assert!(
            acl.may_write(anon, "sensors/dev-1"),
            "# matches the parent level"
        );
        assert!(
            !acl.may_write(anon, "sensors/dev-2/telemetry"),
            "another device"
        );
        assert!(
            !acl.may_write(anon, "users/dev-1/data"),
            "%u without a user name"
        );

        let gw = c("gw", Some("gateway-7"));
        assert!(acl.may_write(gw, "sensors/dev-9/telemetry"));
        assert!(!acl.may_write(gw, "sensors/secret/telemetry"), "deny wins");
        assert!(
            !acl.may_write(gw, "public/x"),
            "anonymous rules are not the user's"
        );
        assert!(acl.may_write(gw, "users/gateway-7/data"));
        assert!(!acl.may_write(gw, "users/gateway-8/data"));
        assert!(acl.may_write(gw, "fw/dev-gw-gateway-7"));
        assert!(!acl.may_write(gw, "fw/dev-gw-gateway-"));

        let reader = c("r", Some("reader"));
        assert!(!acl.may_write(reader, "sensors/x/telemetry"));
        let stranger = c("s", Some("unknown"));
        assert!(!acl.may_write(stranger, "public/x"));
        assert!(acl.may_write(stranger, "users/unknown/data"));
    }

    #[test]
    fn substitutions_cannot_widen_a_pattern() {
        let acl = Acl::parse("pattern write sensors/%c/telemetry").expect("parse");
        assert!(!acl.may_write(c("a/b", None), "sensors/a/b/telemetry"));
        assert!(!acl.may_write(c("+", None), "sensors/x/telemetry"));
        assert!(!acl.may_write(c("", None), "sensors//telemetry"));
        assert!(acl.may_write(c("x", None), "sensors/x/telemetry"));
    }

    #[test]
    fn wildcards_skip_dollar_topics() {
        let acl = Acl::parse("topic write #\ntopic write +/a").expect("parse");
        assert!(acl.may_write(c("x", None), "a/b"));
        assert!(!acl.may_write(c("x", None), "$SYS/a"));
        assert!(!acl.may_write(c("x", None), "$x/a"));
    }

    #[test]
    fn bad_lines_name_the_line() {
        for (text, needle) in [
            ("user", "needs a name"),
            ("topic write a/#/b", "last level"),
            ("topic write a+/b", "mixes"),
            ("allow all", "unknown keyword"),
            ("topic", "empty topic"),
        ] {
            let e = Acl::parse(&format!("# c\n{text}"))
                .expect_err(text)
                .to_string();
            assert!(e.starts_with("line 2"), "{e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn topics_may_hold_spaces_and_percent() {
        let acl = Acl::parse("topic a b/c\npattern write x/100%/%c").expect("parse");
        assert!(acl.may_write(c("d", None), "a b/c"));
        assert!(acl.may_write(c("d", None), "x/100%/d"));
    }
}
