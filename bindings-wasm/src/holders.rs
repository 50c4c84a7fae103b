//! Which tabs of the browser want which stream. The leader's engine holds one subscription per stream for every
//! tab; a stream is unsubscribed only when no tab wants it any more (its last holder unsubscribed or left), so one
//! tab's `unsubscribe` never takes a stream away from another. A stream the server refused or ended is no tab's any
//! more, so that no tab's `hello` to a later leader subscribes it again.

use tidings_core::StreamMap;

/// Streams and the tabs holding each.
#[derive(Debug, Default)]
pub(crate) struct Holders {
    by_stream: StreamMap<Vec<String>>,
}

impl Holders {
    /// `tab` wants `stream`.
    pub(crate) fn hold(&mut self, tab: &str, stream: &str) {
        let tabs = self.by_stream.get_or_insert(stream, Vec::new());
        if !tabs.iter().any(|t| t == tab) {
            tabs.push(tab.to_owned());
        }
    }

    /// `tab` no longer wants `stream`; true when no tab does (the stream should be unsubscribed).
    pub(crate) fn release(&mut self, tab: &str, stream: &str) -> bool {
        let Some(tabs) = self.by_stream.get_mut(stream) else { return false };
        tabs.retain(|t| t != tab);
        if tabs.is_empty() {
            self.by_stream.remove(stream);
            return true;
        }
        false
    }

    /// `tab` wants exactly `streams` now; returns the streams nobody wants any more.
    pub(crate) fn set(&mut self, tab: &str, streams: &[String]) -> Vec<String> {
        let held = self.held_by(tab);
        let released = held.into_iter().filter(|s| !streams.contains(s) && self.release(tab, s)).collect();
        for s in streams {
            self.hold(tab, s);
        }
        released
    }

    /// `tab` is gone; returns the streams nobody wants any more.
    pub(crate) fn gone(&mut self, tab: &str) -> Vec<String> {
        self.set(tab, &[])
    }

    /// The server refused or ended `stream` (the engine dropped it): no tab holds it any more.
    pub(crate) fn forget(&mut self, stream: &str) {
        self.by_stream.remove(stream);
    }

    /// The streams `tab` holds (what it tells a new leader it wants).
    pub(crate) fn held_by(&self, tab: &str) -> Vec<String> {
        self.by_stream.iter().filter(|(_, tabs)| tabs.iter().any(|t| t == tab)).map(|(s, _)| s.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_goes_only_when_its_last_tab_lets_go() {
        let mut h = Holders::default();
        h.hold("a", "topic:x");
        h.hold("b", "topic:x");
        h.hold("a", "topic:x");
        assert!(!h.release("a", "topic:x"), "b still wants it");
        assert!(h.release("b", "topic:x"));
        assert!(!h.release("b", "topic:x"), "releasing twice is nothing");
        h.hold("a", "topic:y");
        h.hold("b", "topic:y");
        h.hold("b", "topic:z");
        assert_eq!(h.set("b", &["topic:w".to_string()]), ["topic:z"], "y is still a's");
        assert_eq!(h.gone("a"), ["topic:y"]);
        assert_eq!(h.gone("b"), ["topic:w"]);
    }

    #[test]
    fn a_stream_the_server_ended_is_no_tabs_any_more() {
        let mut h = Holders::default();
        h.hold("a", "topic:x");
        h.hold("b", "topic:x");
        h.hold("a", "topic:y");
        h.forget("topic:x");
        assert_eq!(h.held_by("a"), ["topic:y"]);
        assert_eq!(h.held_by("b"), Vec::<String>::new());
        assert!(!h.release("b", "topic:x"), "nothing to unsubscribe: the engine dropped it already");
        assert_eq!(h.gone("a"), ["topic:y"]);
    }
}
