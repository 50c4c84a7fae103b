//! Quiet hours: an IANA time zone and weekly ranges of local wall-clock time.
//!
//! A range is `day start–end` in local time, start inclusive and end exclusive (Courier's convention); an end at
//! or before the start runs into the next day (`mon 22:00–07:00` ends Tuesday 07:00), and `24:00` is the end of
//! the day. Ranges may overlap or touch; touching and overlapping occurrences form one quiet period.
//!
//! Daylight-saving changes are handled on the occurrence, not on the clock reading: an occurrence of a range
//! begins at the first instant whose local time is at or after its start and ends at the first instant after
//! that whose local time is at or after its end. So a boundary that falls into a spring-forward gap is the
//! moment the clocks jump (a 02:30 end on a night that skips 02:00–03:00 ends at the jump), a boundary in the
//! repeated hour of a fall-back night is its first occurrence, and the repeated hour after a quiet period has
//! ended does not start it again. Time zones come from jiff's bundled copy of the tz database, so results do
//! not depend on the host's `/usr/share/zoneinfo`.

use std::fmt;

use jiff::civil::{Date, DateTime, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan as _};
use serde::{Deserialize, Serialize};

use super::UnixMs;

/// A time of day as minutes since local midnight, `0..=1440` (`1440` is `24:00`, only meaningful as an end).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime(u16);

impl LocalTime {
    /// `hh:mm`; `hour` 0–24, `minute` 0–59, at most `24:00`.
    pub fn new(hour: u8, minute: u8) -> Option<Self> {
        let m = u16::from(hour) * 60 + u16::from(minute);
        (minute < 60 && m <= 1440).then_some(LocalTime(m))
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u16 {
        self.0
    }

    /// Parses `HH:MM` (`24:00` allowed).
    pub fn parse(text: &str) -> Option<Self> {
        let (h, m) = text.split_once(':')?;
        // Digits only: `str::parse` would take `+5` as 5, so `10:+5` would be 10:05.
        if h.is_empty() || h.len() > 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        LocalTime::new(h.parse().ok()?, m.parse().ok()?)
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

/// One weekly quiet range: on `day`, from `start` (inclusive) to `end` (exclusive), in local time. An `end` at
/// or before `start` is on the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeeklyRange {
    /// The day the range starts on.
    pub day: Weekday,
    /// Start, inclusive.
    pub start: LocalTime,
    /// End, exclusive.
    pub end: LocalTime,
}

/// Why a quiet-hours definition was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuietHoursError {
    /// Not a time zone of the tz database.
    #[error("`{0}` is not an IANA time zone (e.g. `Europe/Berlin`)")]
    UnknownTimeZone(String),
    /// A day name that is not one of `mon`…`sun`.
    #[error("`{0}` is not a day (mon, tue, wed, thu, fri, sat, sun)")]
    BadDay(String),
    /// A time that is not `HH:MM` within a day.
    #[error("`{0}` is not a time of day (HH:MM, 00:00 to 24:00)")]
    BadTime(String),
    /// A range that starts at `24:00`, or is empty.
    #[error("range {0}: {1}")]
    BadRange(usize, &'static str),
    /// More ranges than anyone needs.
    #[error("at most {MAX_RANGES} ranges")]
    TooManyRanges,
}

/// Most ranges in one definition.
pub const MAX_RANGES: usize = 28;

/// The serialised form (what users and operators send, and what a store keeps):
/// `{"time_zone":"Europe/Berlin","ranges":[{"day":"mon","start":"22:00","end":"07:00"}]}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuietHoursSpec {
    /// IANA time zone name.
    pub time_zone: String,
    /// Weekly ranges.
    pub ranges: Vec<RangeSpec>,
}

/// One range of a [`QuietHoursSpec`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    /// `mon` … `sun`.
    pub day: String,
    /// `HH:MM`.
    pub start: String,
    /// `HH:MM` (`24:00` allowed).
    pub end: String,
}

/// A user's quiet hours, checked and ready to evaluate.
#[derive(Clone, PartialEq)]
pub struct QuietHours {
    zone_name: String,
    zone: TimeZone,
    ranges: Vec<WeeklyRange>,
}

impl fmt::Debug for QuietHours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuietHours").field("time_zone", &self.zone_name).field("ranges", &self.ranges).finish()
    }
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

fn day_name(day: Weekday) -> &'static str {
    DAYS.iter().find(|(_, d)| *d == day).map_or("mon", |(n, _)| n)
}

impl QuietHours {
    /// Quiet hours in the IANA zone `time_zone`.
    pub fn new(time_zone: &str, ranges: Vec<WeeklyRange>) -> Result<Self, QuietHoursError> {
        // The bundled database only: a host's zoneinfo (or its absence) must not change the answers.
        let zone = jiff::tz::db().get(time_zone).map_err(|_| QuietHoursError::UnknownTimeZone(time_zone.to_owned()))?;
        if ranges.len() > MAX_RANGES {
            return Err(QuietHoursError::TooManyRanges);
        }
        for (i, r) in ranges.iter().enumerate() {
            if r.start.0 >= 1440 {
                return Err(QuietHoursError::BadRange(i, "a range cannot start at 24:00"));
            }
            if r.start == r.end {
                return Err(QuietHoursError::BadRange(i, "start and end are equal (use 00:00-24:00 for a whole day)"));
            }
        }
        Ok(QuietHours { zone_name: time_zone.to_owned(), zone, ranges })
    }

    /// From the serialised form; errors name the offending value.
    pub fn from_spec(spec: &QuietHoursSpec) -> Result<Self, QuietHoursError> {
        let mut ranges = Vec::with_capacity(spec.ranges.len());
        for r in &spec.ranges {
            let day = DAYS
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&r.day))
                .map(|(_, d)| *d)
                .ok_or_else(|| QuietHoursError::BadDay(r.day.clone()))?;
            let time = |t: &str| LocalTime::parse(t).ok_or_else(|| QuietHoursError::BadTime(t.to_owned()));
            ranges.push(WeeklyRange { day, start: time(&r.start)?, end: time(&r.end)? });
        }
        QuietHours::new(&spec.time_zone, ranges)
    }

    /// The serialised form.
    pub fn to_spec(&self) -> QuietHoursSpec {
        QuietHoursSpec {
            time_zone: self.zone_name.clone(),
            ranges: self
                .ranges
                .iter()
                .map(|r| RangeSpec { day: day_name(r.day).into(), start: r.start.to_string(), end: r.end.to_string() })
                .collect(),
        }
    }

    /// The IANA zone name.
    pub fn time_zone(&self) -> &str {
        &self.zone_name
    }

    /// The ranges.
    pub fn ranges(&self) -> &[WeeklyRange] {
        &self.ranges
    }

    /// If `at` is within quiet hours, the instant the quiet period ends (ms since the Unix epoch): the end of the
    /// occurrence containing `at`, extended through occurrences that overlap or touch it. `None` outside quiet
    /// hours. A schedule that is quiet around the clock is followed for at most eight days; the end returned then
    /// is simply re-evaluated when it comes.
    pub fn quiet_until(&self, at: UnixMs) -> Option<UnixMs> {
        let mut end = self.containing_end(to_ts(at))?;
        for _ in 0..8 * MAX_RANGES {
            match self.containing_end(end) {
                Some(later) if later > end => end = later,
                _ => break,
            }
        }
        Some(from_ts(end))
    }

    /// Whether `at` is within quiet hours.
    pub fn is_quiet(&self, at: UnixMs) -> bool {
        self.containing_end(to_ts(at)).is_some()
    }

    /// The latest end among occurrences that contain `t`.
    fn containing_end(&self, t: Timestamp) -> Option<Timestamp> {
        let today = self.zone.to_datetime(t).date();
        let mut best: Option<Timestamp> = None;
        // An occurrence lasts at most a day (plus a DST shift), so one containing `t` starts today, yesterday or,
        // across a large offset change, the day before.
        for back in 0..3i64 {
            let Ok(date) = today.checked_sub(back.days()) else { continue };
            for r in self.ranges.iter().filter(|r| r.day == date.weekday()) {
                let Some((start, end)) = self.occurrence(date, r) else { continue };
                if start <= t && t < end && best.is_none_or(|b| end > b) {
                    best = Some(end);
                }
            }
        }
        best
    }

    /// The instants of the occurrence of `r` that starts on local `date`.
    fn occurrence(&self, date: Date, r: &WeeklyRange) -> Option<(Timestamp, Timestamp)> {
        let start = self.earliest_at_or_after(at_minutes(date, r.start.0)?)?;
        let end_date = if r.end <= r.start { date.tomorrow().ok()? } else { date };
        let end = self.earliest_at_or_after(at_minutes(end_date, r.end.0)?)?;
        Some((start, end))
    }

    /// The first instant whose local time is at or after `dt`: `dt` itself when it exists once, its first
    /// occurrence in a fold, the transition when `dt` falls in a gap.
    fn earliest_at_or_after(&self, dt: DateTime) -> Option<Timestamp> {
        let ambiguous = self.zone.to_ambiguous_timestamp(dt);
        match ambiguous.offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            // Before the fold the offset is larger (clocks ahead), so the `before` reading is the earlier instant.
            AmbiguousOffset::Fold { before, after } => {
                let a = before.to_timestamp(dt).ok()?;
                let b = after.to_timestamp(dt).ok()?;
                Some(a.min(b))
            }
            // Read with the offset after the gap, `dt` lands before the transition; the transition itself is the
            // first instant whose local reading is past the gap, hence at or after `dt`.
            AmbiguousOffset::Gap { after, .. } => {
                let before_jump = after.to_timestamp(dt).ok()?;
                self.zone.following(before_jump).next().map(|tr| tr.timestamp())
            }
        }
    }
}

/// `date` at `minutes` past midnight (1440 = the next midnight).
fn at_minutes(date: Date, minutes: u16) -> Option<DateTime> {
    if minutes >= 1440 {
        return Some(date.tomorrow().ok()?.at(0, 0, 0, 0));
    }
    let h = i8::try_from(minutes / 60).ok()?;
    let m = i8::try_from(minutes % 60).ok()?;
    Some(date.at(h, m, 0, 0))
}

fn to_ts(ms: UnixMs) -> Timestamp {
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX)
}

fn from_ts(t: Timestamp) -> UnixMs {
    u64::try_from(t.as_millisecond()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ms since the epoch of an RFC 3339 instant.
    pub(crate) fn ms(rfc3339: &str) -> UnixMs {
        from_ts(rfc3339.parse::<Timestamp>().unwrap())
    }

    fn iso(at: UnixMs) -> String {
        to_ts(at).to_string()
    }

    fn range(day: Weekday, start: &str, end: &str) -> WeeklyRange {
        WeeklyRange { day, start: LocalTime::parse(start).unwrap(), end: LocalTime::parse(end).unwrap() }
    }

    fn every_night(zone: &str, start: &str, end: &str) -> QuietHours {
        QuietHours::new(zone, DAYS.iter().map(|(_, d)| range(*d, start, end)).collect()).unwrap()
    }

    #[test]
    fn local_times_parse_and_print() {
        assert_eq!(LocalTime::parse("07:05").unwrap().minutes(), 425);
        assert_eq!(LocalTime::parse("7:05").unwrap().to_string(), "07:05");
        assert_eq!(LocalTime::parse("24:00").unwrap().minutes(), 1440);
        for bad in ["24:01", "25:00", "07:60", "0705", "07:5", "", ":00", "aa:bb", "123:00", "10:+5", "+7:05", "7:-0"] {
            assert_eq!(LocalTime::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn definitions_are_checked() {
        let spec = |zone: &str, day: &str, start: &str, end: &str| QuietHoursSpec {
            time_zone: zone.into(),
            ranges: vec![RangeSpec { day: day.into(), start: start.into(), end: end.into() }],
        };
        assert!(QuietHours::from_spec(&spec("Europe/Berlin", "mon", "22:00", "07:00")).is_ok());
        assert!(QuietHours::from_spec(&spec("Europe/Berlin", "Sun", "00:00", "24:00")).is_ok());
        assert_eq!(
            QuietHours::from_spec(&spec("Europe/Atlantis", "mon", "22:00", "07:00")).unwrap_err().to_string(),
            "`Europe/Atlantis` is not an IANA time zone (e.g. `Europe/Berlin`)"
        );
        assert_eq!(
            QuietHours::from_spec(&spec("UTC", "monday", "22:00", "07:00")),
            Err(QuietHoursError::BadDay("monday".into()))
        );
        assert_eq!(QuietHours::from_spec(&spec("UTC", "mon", "22:00", "7")), Err(QuietHoursError::BadTime("7".into())));
        assert!(matches!(
            QuietHours::from_spec(&spec("UTC", "mon", "22:00", "22:00")),
            Err(QuietHoursError::BadRange(0, _))
        ));
        assert!(matches!(
            QuietHours::from_spec(&spec("UTC", "mon", "24:00", "07:00")),
            Err(QuietHoursError::BadRange(0, _))
        ));
        let q = QuietHours::from_spec(&spec("America/New_York", "fri", "23:30", "24:00")).unwrap();
        assert_eq!(QuietHours::from_spec(&q.to_spec()).unwrap(), q);
        assert_eq!(q.to_spec(), spec("America/New_York", "fri", "23:30", "24:00"));
    }

    #[test]
    fn a_range_across_midnight_on_an_ordinary_day() {
        // Monday 2026-06-01 in Berlin (UTC+2).
        let q = QuietHours::new("Europe/Berlin", vec![range(Weekday::Monday, "22:00", "07:00")]).unwrap();
        assert_eq!(q.quiet_until(ms("2026-06-01T19:59:59Z")), None);
        assert_eq!(q.quiet_until(ms("2026-06-01T20:00:00Z")).map(iso).as_deref(), Some("2026-06-02T05:00:00Z"));
        assert_eq!(q.quiet_until(ms("2026-06-02T04:59:59.999Z")).map(iso).as_deref(), Some("2026-06-02T05:00:00Z"));
        assert_eq!(q.quiet_until(ms("2026-06-02T05:00:00Z")), None, "the end is exclusive");
        // Only Monday night: Tuesday night is not quiet.
        assert_eq!(q.quiet_until(ms("2026-06-02T21:00:00Z")), None);
    }

    #[test]
    fn touching_and_overlapping_ranges_form_one_period() {
        let q = QuietHours::new(
            "UTC",
            vec![
                range(Weekday::Saturday, "00:00", "24:00"),
                range(Weekday::Sunday, "00:00", "12:00"),
                range(Weekday::Friday, "20:00", "01:00"),
            ],
        )
        .unwrap();
        // Friday 2026-06-05 21:00 → Sunday 12:00.
        assert_eq!(q.quiet_until(ms("2026-06-05T21:00:00Z")).map(iso).as_deref(), Some("2026-06-07T12:00:00Z"));
        assert!(q.is_quiet(ms("2026-06-06T13:00:00Z")));
        assert!(!q.is_quiet(ms("2026-06-07T12:00:00Z")));
    }

    #[test]
    fn quiet_around_the_clock_returns_a_bounded_end() {
        let q = every_night("UTC", "00:00", "24:00");
        let at = ms("2026-06-01T12:00:00Z");
        let end = q.quiet_until(at).unwrap();
        assert!(end > at + 24 * 3_600_000, "{}", iso(end));
    }

    // DST. New York: 2026-03-08 02:00 EST → 03:00 EDT (spring forward); 2026-11-01 02:00 EDT → 01:00 EST (fall
    // back). Berlin: 2026-03-29 02:00 CET → 03:00 CEST; 2026-10-25 03:00 CEST → 02:00 CET.

    #[test]
    fn spring_forward_shortens_the_night_new_york() {
        let q = every_night("America/New_York", "22:00", "07:00");
        // Saturday 22:00 EST = 03:00Z; Sunday 07:00 EDT = 11:00Z: eight hours, not nine.
        assert_eq!(q.quiet_until(ms("2026-03-08T03:00:00Z")).map(iso).as_deref(), Some("2026-03-08T11:00:00Z"));
        assert_eq!(q.quiet_until(ms("2026-03-08T07:30:00Z")).map(iso).as_deref(), Some("2026-03-08T11:00:00Z"));
        assert!(!q.is_quiet(ms("2026-03-08T02:59:59Z")));
        assert!(!q.is_quiet(ms("2026-03-08T11:00:00Z")));
    }

    #[test]
    fn fall_back_lengthens_the_night_new_york() {
        let q = every_night("America/New_York", "22:00", "07:00");
        // Saturday 22:00 EDT = 02:00Z; Sunday 07:00 EST = 12:00Z: ten hours.
        assert_eq!(q.quiet_until(ms("2026-11-01T02:00:00Z")).map(iso).as_deref(), Some("2026-11-01T12:00:00Z"));
        assert!(q.is_quiet(ms("2026-11-01T11:59:00Z")));
        assert!(!q.is_quiet(ms("2026-11-01T12:00:00Z")));
    }

    #[test]
    fn an_end_inside_the_spring_forward_gap_is_the_jump() {
        // 01:00–02:30 on a night that skips 02:00–03:00 local: the period ends when the clocks jump, at 02:00 EST
        // = 07:00Z (not at 03:30 EDT, the "compatible" reading of 02:30, which would be 30 minutes late).
        let q = QuietHours::new("America/New_York", vec![range(Weekday::Sunday, "01:00", "02:30")]).unwrap();
        assert_eq!(q.quiet_until(ms("2026-03-08T06:00:00Z")).map(iso).as_deref(), Some("2026-03-08T07:00:00Z"));
        assert!(!q.is_quiet(ms("2026-03-08T07:00:00Z")));
        // A start in the gap begins at the jump: 02:30–04:00 is quiet from 07:00Z (03:00 EDT) to 08:00Z.
        let q = QuietHours::new("America/New_York", vec![range(Weekday::Sunday, "02:30", "04:00")]).unwrap();
        assert!(!q.is_quiet(ms("2026-03-08T06:59:59Z")));
        assert_eq!(q.quiet_until(ms("2026-03-08T07:00:00Z")).map(iso).as_deref(), Some("2026-03-08T08:00:00Z"));
    }

    #[test]
    fn the_repeated_hour_does_not_restart_a_finished_period() {
        // 22:00–01:30 on the fall-back night: ends at the first 01:30 (EDT, 05:30Z). When the clocks fall back,
        // 01:00–01:30 EST comes round again (06:00Z–06:30Z) but the period has ended.
        let q = every_night("America/New_York", "22:00", "01:30");
        assert_eq!(q.quiet_until(ms("2026-11-01T03:00:00Z")).map(iso).as_deref(), Some("2026-11-01T05:30:00Z"));
        assert!(!q.is_quiet(ms("2026-11-01T05:30:00Z")));
        assert!(!q.is_quiet(ms("2026-11-01T06:10:00Z")), "01:10 EST, the second pass of the hour");
        // A range inside the repeated hour: 01:15–01:45 is quiet from its first 01:15 to its first 01:45.
        let q = QuietHours::new("America/New_York", vec![range(Weekday::Sunday, "01:15", "01:45")]).unwrap();
        assert_eq!(q.quiet_until(ms("2026-11-01T05:20:00Z")).map(iso).as_deref(), Some("2026-11-01T05:45:00Z"));
        assert!(!q.is_quiet(ms("2026-11-01T06:20:00Z")));
    }

    #[test]
    fn spring_forward_and_fall_back_in_berlin() {
        let q = every_night("Europe/Berlin", "23:00", "06:00");
        // Saturday 2026-03-28 23:00 CET = 22:00Z → Sunday 06:00 CEST = 04:00Z (six hours).
        assert_eq!(q.quiet_until(ms("2026-03-28T22:00:00Z")).map(iso).as_deref(), Some("2026-03-29T04:00:00Z"));
        assert!(!q.is_quiet(ms("2026-03-28T21:59:59Z")));
        // Saturday 2026-10-24 23:00 CEST = 21:00Z → Sunday 06:00 CET = 05:00Z (eight hours).
        assert_eq!(q.quiet_until(ms("2026-10-24T21:00:00Z")).map(iso).as_deref(), Some("2026-10-25T05:00:00Z"));
        assert!(q.is_quiet(ms("2026-10-25T04:30:00Z")));
        // A range ending in Berlin's gap (02:00–03:00 on 2026-03-29): ends at the jump, 01:00Z.
        let q = QuietHours::new("Europe/Berlin", vec![range(Weekday::Sunday, "00:30", "02:15")]).unwrap();
        assert_eq!(q.quiet_until(ms("2026-03-28T23:45:00Z")).map(iso).as_deref(), Some("2026-03-29T01:00:00Z"));
        // A range starting in Berlin's repeated hour (02:00–03:00 twice on 2026-10-25): its first 02:30 (CEST,
        // 00:30Z) to 04:00 CET (03:00Z).
        let q = QuietHours::new("Europe/Berlin", vec![range(Weekday::Sunday, "02:30", "04:00")]).unwrap();
        assert!(!q.is_quiet(ms("2026-10-25T00:29:59Z")));
        assert_eq!(q.quiet_until(ms("2026-10-25T00:30:00Z")).map(iso).as_deref(), Some("2026-10-25T03:00:00Z"));
    }

    #[test]
    fn southern_hemisphere_and_half_hour_zones() {
        // Sydney: DST ends 2026-04-05 03:00 AEDT → 02:00 AEST; starts 2026-10-04 02:00 AEST → 03:00 AEDT.
        let q = every_night("Australia/Sydney", "22:00", "07:00");
        // Saturday 2026-04-04 22:00 AEDT (+11) = 11:00Z → Sunday 07:00 AEST (+10) = 21:00Z.
        assert_eq!(q.quiet_until(ms("2026-04-04T11:00:00Z")).map(iso).as_deref(), Some("2026-04-04T21:00:00Z"));
        // Saturday 2026-10-03 22:00 AEST = 12:00Z → Sunday 07:00 AEDT = 20:00Z.
        assert_eq!(q.quiet_until(ms("2026-10-03T12:00:00Z")).map(iso).as_deref(), Some("2026-10-03T20:00:00Z"));
        // Kolkata is UTC+05:30 all year.
        let q = every_night("Asia/Kolkata", "22:00", "07:00");
        assert_eq!(q.quiet_until(ms("2026-03-08T16:30:00Z")).map(iso).as_deref(), Some("2026-03-09T01:30:00Z"));
    }
}
