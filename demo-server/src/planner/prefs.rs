//! Preferences: `(notification type or topic, channel) → on/off`, deny wins, unset means on.
//!
//! A rule names a notification `type` or a `topic` (exactly, or as a prefix ending in `*`, as topics in tokens
//! do; `*` alone matches everything) and a channel. A notification is denied on a channel when **any** rule
//! that matches its type or its topic on that channel is off, whatever else is on (Knock's "every applicable
//! preference must be true"). `critical` notifications are never denied (see [`Preferences::allows`]).

use serde::{Deserialize, Serialize};
use tidings_core::protocol::Priority;

/// A delivery channel a preference applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Live delivery over the WebSocket (and replay).
    Socket,
    /// Push (APNs, FCM, Web Push), including digests and quiet-hours summaries.
    Push,
}

/// What a rule is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// Notifications whose `type` matches (exact, or a prefix ending in `*`).
    Type(String),
    /// Notifications published to a topic whose name matches (exact, or a prefix ending in `*`).
    Topic(String),
}

/// One preference.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// What it is about.
    #[serde(flatten)]
    pub selector: Selector,
    /// Which channel.
    pub channel: Channel,
    /// On or off.
    pub enabled: bool,
}

/// A user's preferences. Serialised as `{"rules":[{"type":"comment.*","channel":"push","enabled":false}]}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preferences {
    /// The rules, in no particular order (order does not matter: deny wins).
    pub rules: Vec<Rule>,
}

/// Most rules per user.
pub const MAX_RULES: usize = 256;

fn matches(pattern: &str, value: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => value.starts_with(prefix),
        None => pattern == value,
    }
}

impl Preferences {
    /// No rules: everything on.
    pub fn all_on() -> Self {
        Preferences::default()
    }

    /// Adds a rule (builder style, for tests and operators).
    pub fn with(mut self, selector: Selector, channel: Channel, enabled: bool) -> Self {
        self.rules.push(Rule { selector, channel, enabled });
        self
    }

    /// Checks the rules: at most [`MAX_RULES`], patterns 1–128 bytes with `*` only at the end.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > MAX_RULES {
            return Err(format!("at most {MAX_RULES} rules"));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let (Selector::Type(p) | Selector::Topic(p)) = &r.selector;
            if p.is_empty() || p.len() > 128 {
                return Err(format!("rule {i}: the pattern must be 1 to 128 bytes"));
            }
            if p.trim_end_matches('*').contains('*') || p.ends_with("**") {
                return Err(format!("rule {i}: `*` may only end a pattern"));
            }
        }
        Ok(())
    }

    /// The rule that denies a notification of `kind` (published to `topic`, if any) on `channel`, if one does.
    pub fn denying_rule(&self, channel: Channel, kind: &str, topic: Option<&str>) -> Option<&Rule> {
        self.rules.iter().find(|r| {
            r.channel == channel
                && !r.enabled
                && match &r.selector {
                    Selector::Type(p) => matches(p, kind),
                    Selector::Topic(p) => topic.is_some_and(|t| matches(p, t)),
                }
        })
    }

    /// Whether a notification may use `channel`: `critical` always; otherwise unless a matching rule is off.
    pub fn allows(&self, channel: Channel, priority: Priority, kind: &str, topic: Option<&str>) -> bool {
        priority == Priority::Critical || self.denying_rule(channel, kind, topic).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Channel::{Push, Socket};
    use Priority::{Critical, Important, Informational};

    fn ty(p: &str) -> Selector {
        Selector::Type(p.into())
    }

    fn topic(p: &str) -> Selector {
        Selector::Topic(p.into())
    }

    #[test]
    fn unset_is_on_and_deny_wins() {
        let none = Preferences::all_on();
        assert!(none.allows(Push, Important, "comment.created", None));
        let p = Preferences::all_on().with(ty("comment.*"), Push, false).with(ty("comment.created"), Push, true).with(
            topic("news"),
            Socket,
            false,
        );
        // The explicit "on" does not beat the prefix "off".
        assert!(!p.allows(Push, Important, "comment.created", None));
        assert!(p.allows(Socket, Important, "comment.created", None), "another channel");
        assert!(p.allows(Push, Important, "like.created", None), "another type");
        // Topic rules apply to notifications published to the topic, whatever their type.
        assert!(!p.allows(Socket, Informational, "article.published", Some("news")));
        assert!(p.allows(Socket, Informational, "article.published", Some("newsletter")), "exact match only");
        assert!(p.allows(Socket, Informational, "article.published", None));
    }

    #[test]
    fn critical_cannot_be_opted_out_of() {
        let p = Preferences::all_on().with(ty("*"), Push, false).with(ty("*"), Socket, false);
        assert!(!p.allows(Push, Important, "security.alert", None));
        assert!(p.allows(Push, Critical, "security.alert", None));
        assert!(p.allows(Socket, Critical, "security.alert", Some("x")));
    }

    #[test]
    fn serialised_form_and_validation() {
        let p: Preferences = serde_json::from_str(
            r#"{"rules":[{"type":"comment.*","channel":"push","enabled":false},{"topic":"news","channel":"socket","enabled":true}]}"#,
        )
        .unwrap();
        assert_eq!(p, Preferences::all_on().with(ty("comment.*"), Push, false).with(topic("news"), Socket, true));
        assert_eq!(p.validate(), Ok(()));
        assert!(Preferences::all_on().with(ty("a*b"), Push, false).validate().unwrap_err().contains("`*` may only"));
        assert!(Preferences::all_on().with(ty(""), Push, false).validate().is_err());
        assert!(
            serde_json::from_str::<Preferences>(r#"{"rules":[{"type":"x","channel":"email","enabled":false}]}"#)
                .is_err()
        );
    }
}
