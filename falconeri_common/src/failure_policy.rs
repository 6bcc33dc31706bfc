//! Failure policies of a pipeline spec: how many datums a job may lose and
//! still succeed (`max_failed_datums`), and what a command's exit code or
//! signal means (`on_exit` rules). Pure: the server applies them when a
//! failure report comes in and when a job ends.
//!
//! The rules are read like Kubernetes' `podFailurePolicy` and AWS Batch's
//! `evaluateOnExit`: in order, the first rule that matches decides, and a
//! failure no rule matches is retried while the datum has tries left (the
//! behaviour without rules).

use std::fmt;

use schemars::JsonSchema;
use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, Visitor},
};

/// The largest exit status a process can have on Unix.
const MAX_EXIT_CODE: i32 = 255;

/// How many datums of a job may fail for good before the job fails: a
/// count (`5`) or a percentage of the job's datums (`"2%"`, at most two
/// decimals, rounded down to whole datums).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxFailedDatums {
    Count(u64),
    /// Hundredths of a percent: `"2.5%"` is 250.
    Percent(u32),
}

impl MaxFailedDatums {
    /// How many failed datums a job of `datum_count` datums may have and
    /// still end `done`. Percentages round down: a limit never lets more
    /// fail than the user allowed.
    pub fn limit(self, datum_count: i64) -> i64 {
        match self {
            MaxFailedDatums::Count(n) => i64::try_from(n).unwrap_or(i64::MAX),
            MaxFailedDatums::Percent(hundredths) => {
                let count = i128::from(datum_count.max(0));
                let allowed = count * i128::from(hundredths) / 10_000;
                i64::try_from(allowed).unwrap_or(i64::MAX)
            }
        }
    }

    /// Parses the string form, `"2%"` or `"0.25%"`.
    fn parse_percent(text: &str) -> Result<MaxFailedDatums, String> {
        const SHAPE: &str = "a count is a number (5), a percentage a string ending in % (\"2%\")";
        let Some(number) = text.trim().strip_suffix('%') else {
            return Err(format!("`{text}` is not a percentage: {SHAPE}"));
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || !(fraction.is_empty() || digits(fraction)) {
            return Err(format!("`{text}` is not a percentage: {SHAPE}"));
        }
        if fraction.len() > 2 {
            return Err(format!(
                "`{text}` has more than two decimals; write at most \"0.01%\" steps"
            ));
        }
        let whole: u32 = whole
            .parse()
            .map_err(|_| format!("`{text}` must be 0% to 100%"))?;
        let fraction: u32 = format!("{fraction:0<2}").parse().unwrap_or(0);
        let hundredths = whole.saturating_mul(100).saturating_add(fraction);
        if hundredths > 10_000 {
            return Err(format!("`{text}` must be 0% to 100%"));
        }
        Ok(MaxFailedDatums::Percent(hundredths))
    }
}

impl fmt::Display for MaxFailedDatums {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxFailedDatums::Count(n) => write!(f, "{n}"),
            MaxFailedDatums::Percent(hundredths) if hundredths % 100 == 0 => {
                write!(f, "{}%", hundredths / 100)
            }
            MaxFailedDatums::Percent(hundredths) => {
                let text = format!("{}.{:02}", hundredths / 100, hundredths % 100);
                write!(f, "{}%", text.trim_end_matches('0'))
            }
        }
    }
}

impl Serialize for MaxFailedDatums {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxFailedDatums::Count(n) => serializer.serialize_u64(*n),
            MaxFailedDatums::Percent(_) => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for MaxFailedDatums {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LimitVisitor;

        impl Visitor<'_> for LimitVisitor {
            type Value = MaxFailedDatums;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a count of datums (5) or a percentage string (\"2%\")")
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(MaxFailedDatums::Count(v))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(MaxFailedDatums::Count)
                    .map_err(|_| E::custom(format!("must not be negative, not {v}")))
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{v} is not a whole number of datums (a percentage is a string: \"{v}%\")"
                )))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                MaxFailedDatums::parse_percent(v).map_err(E::custom)
            }
        }

        deserializer.deserialize_any(LimitVisitor)
    }
}

impl JsonSchema for MaxFailedDatums {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MaxFailedDatums".into()
    }

    fn json_schema(_generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How many datums may fail for good while the job still ends done: a count, or a percentage of the job's datums (rounded down).",
            "oneOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,2})?%$"}
            ],
            "examples": [5, "2%", "0.5%"]
        })
    }
}

/// What a matching `on_exit` rule does with a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExitAction {
    /// Retry while the datum has tries left (`datum_tries`): what happens
    /// to a failure no rule matches. Useful before a broader rule.
    Retry,
    /// Fail the datum now, whatever tries it has left.
    FailDatum,
    /// Fail the datum and the whole job now: its other datums are
    /// canceled and its workers stopped, as `job cancel` does.
    FailJob,
}

impl ExitAction {
    /// The name used in specs and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ExitAction::Retry => "retry",
            ExitAction::FailDatum => "fail_datum",
            ExitAction::FailJob => "fail_job",
        }
    }
}

/// One rule of `on_exit`: the exit codes or signals it matches, and its
/// action. Exactly one of `exit_codes` and `signals` is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExitRule {
    /// Exit statuses (1 to 255) of the command that this rule matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exit_codes: Vec<i32>,
    /// Signals, by name (`"SIGKILL"`), that this rule matches when one
    /// killed the command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<String>,
    pub action: ExitAction,
}

/// A rule that matched a failure: its place in `on_exit` and its action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Matched {
    /// The rule's index in `on_exit`.
    pub rule: usize,
    pub action: ExitAction,
}

impl ExitRule {
    /// True if the rule matches a command that ended with `exit_code` or
    /// was killed by `signal` (a signal number).
    fn matches(&self, exit_code: Option<i32>, signal: Option<i32>) -> bool {
        match (exit_code, signal) {
            (Some(code), _) => self.exit_codes.contains(&code),
            (None, Some(number)) => self
                .signals
                .iter()
                .any(|name| signal_number(name) == Some(number)),
            (None, None) => false,
        }
    }
}

/// The first rule of `rules` matching a failed attempt whose command
/// ended with `exit_code` or by `signal`; None when none does (or the
/// failure had no exit status: a download that failed, say), which means
/// the default, retry. An exit status of 0 (a command that succeeded but
/// whose outputs could not be uploaded) matches nothing either, since rules
/// name codes 1 to 255 only.
pub fn match_exit(
    rules: &[ExitRule],
    exit_code: Option<i32>,
    signal: Option<i32>,
) -> Option<Matched> {
    rules
        .iter()
        .position(|rule| rule.matches(exit_code, signal))
        .and_then(|rule| {
            rules.get(rule).map(|r| Matched {
                rule,
                action: r.action,
            })
        })
}

/// The number of the signal called `name` (`SIGKILL`) on this platform.
pub fn signal_number(name: &str) -> Option<i32> {
    name.parse::<nix::sys::signal::Signal>()
        .ok()
        .map(|signal| signal as i32)
}

/// Checks `on_exit`, pushing `(path, message)` for each problem.
pub(crate) fn validate_rules(rules: &[ExitRule], mut problem: impl FnMut(String, String)) {
    for (i, rule) in rules.iter().enumerate() {
        let base = format!("on_exit[{i}]");
        match (rule.exit_codes.is_empty(), rule.signals.is_empty()) {
            (true, true) => problem(
                base.clone(),
                "must name `exit_codes` or `signals` to match".to_owned(),
            ),
            (false, false) => problem(
                base.clone(),
                "must name either `exit_codes` or `signals`, not both (use two rules)".to_owned(),
            ),
            _ => {}
        }
        for (j, code) in rule.exit_codes.iter().enumerate() {
            if !(1..=MAX_EXIT_CODE).contains(code) {
                problem(
                    format!("{base}.exit_codes[{j}]"),
                    format!(
                        "must be 1 to {MAX_EXIT_CODE} (0 is success; a process cannot exit with {code})"
                    ),
                );
            }
        }
        for (j, name) in rule.signals.iter().enumerate() {
            if signal_number(name).is_none() {
                problem(
                    format!("{base}.signals[{j}]"),
                    format!("`{name}` is not a signal name such as \"SIGKILL\" or \"SIGSEGV\""),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(json: &str) -> Result<MaxFailedDatums, String> {
        serde_json::from_str::<MaxFailedDatums>(json).map_err(|err| err.to_string())
    }

    #[test]
    fn counts_and_percentages_parse() {
        assert_eq!(limit("5"), Ok(MaxFailedDatums::Count(5)));
        assert_eq!(limit("0"), Ok(MaxFailedDatums::Count(0)));
        assert_eq!(limit("\"2%\""), Ok(MaxFailedDatums::Percent(200)));
        assert_eq!(limit("\"0.5%\""), Ok(MaxFailedDatums::Percent(50)));
        assert_eq!(limit("\"12.25%\""), Ok(MaxFailedDatums::Percent(1225)));
        assert_eq!(limit("\"100%\""), Ok(MaxFailedDatums::Percent(10_000)));
    }

    #[test]
    fn bad_limits_are_refused_with_a_reason() {
        for (json, expected) in [
            ("-1", "must not be negative"),
            ("2.5", "not a whole number"),
            ("\"5\"", "not a percentage"),
            ("\"%\"", "not a percentage"),
            ("\"x%\"", "not a percentage"),
            ("\"1.5.2%\"", "not a percentage"),
            ("\"101%\"", "must be 0% to 100%"),
            ("\"0.125%\"", "more than two decimals"),
            ("true", "a count of datums"),
        ] {
            let err = limit(json).unwrap_err();
            assert!(err.contains(expected), "{json}: {err}");
        }
    }

    #[test]
    fn limits_round_down_to_whole_datums() {
        assert_eq!(MaxFailedDatums::Count(5).limit(3), 5);
        assert_eq!(MaxFailedDatums::Percent(200).limit(100), 2);
        assert_eq!(MaxFailedDatums::Percent(200).limit(149), 2);
        assert_eq!(MaxFailedDatums::Percent(200).limit(150), 3);
        assert_eq!(MaxFailedDatums::Percent(200).limit(10), 0);
        assert_eq!(MaxFailedDatums::Percent(10_000).limit(7), 7);
        assert_eq!(MaxFailedDatums::Percent(50).limit(1_000_000), 5_000);
    }

    #[test]
    fn limits_serialize_as_written() {
        for json in ["5", "\"2%\"", "\"0.5%\"", "\"12.25%\""] {
            let value = limit(json).unwrap();
            assert_eq!(serde_json::to_string(&value).unwrap(), json);
        }
    }

    fn rules() -> Vec<ExitRule> {
        serde_json::from_str(
            r#"[
                {"exit_codes": [3], "action": "retry"},
                {"exit_codes": [3, 4], "action": "fail_datum"},
                {"signals": ["SIGSEGV", "SIGKILL"], "action": "fail_datum"},
                {"exit_codes": [42], "action": "fail_job"}
            ]"#,
        )
        .unwrap()
    }

    fn check(exit_code: Option<i32>, signal: Option<i32>, expected: Option<(usize, ExitAction)>) {
        let found = match_exit(&rules(), exit_code, signal).map(|m| (m.rule, m.action));
        assert_eq!(found, expected, "exit {exit_code:?} signal {signal:?}");
    }

    #[test]
    fn the_first_matching_rule_decides() {
        check(Some(3), None, Some((0, ExitAction::Retry)));
        check(Some(4), None, Some((1, ExitAction::FailDatum)));
        check(Some(42), None, Some((3, ExitAction::FailJob)));
        check(None, Some(9), Some((2, ExitAction::FailDatum)));
        check(None, Some(11), Some((2, ExitAction::FailDatum)));
    }

    #[test]
    fn unmatched_failures_get_the_default() {
        check(Some(1), None, None);
        check(None, Some(15), None);
        // No exit status: the command never ran or its upload failed.
        check(None, None, None);
        check(Some(0), None, None);
        assert_eq!(match_exit(&[], Some(3), None), None);
    }

    fn problems(json: &str) -> Vec<String> {
        let rules: Vec<ExitRule> = serde_json::from_str(json).unwrap();
        let mut found = Vec::new();
        validate_rules(&rules, |path, message| {
            found.push(format!("{path}: {message}"))
        });
        found
    }

    #[test]
    fn rules_are_validated_with_their_paths() {
        assert!(problems(r#"[{"exit_codes": [1, 255], "action": "retry"}]"#).is_empty());
        let found = problems(
            r#"[
                {"action": "retry"},
                {"exit_codes": [1], "signals": ["SIGKILL"], "action": "fail_job"},
                {"exit_codes": [0, 256, 7], "action": "fail_datum"},
                {"signals": ["SIGKILL", "KILL", "SIGNOPE"], "action": "fail_datum"}
            ]"#,
        );
        assert_eq!(
            found,
            [
                "on_exit[0]: must name `exit_codes` or `signals` to match",
                "on_exit[1]: must name either `exit_codes` or `signals`, not both (use two rules)",
                "on_exit[2].exit_codes[0]: must be 1 to 255 (0 is success; a process cannot exit with 0)",
                "on_exit[2].exit_codes[1]: must be 1 to 255 (0 is success; a process cannot exit with 256)",
                "on_exit[3].signals[1]: `KILL` is not a signal name such as \"SIGKILL\" or \"SIGSEGV\"",
                "on_exit[3].signals[2]: `SIGNOPE` is not a signal name such as \"SIGKILL\" or \"SIGSEGV\"",
            ]
        );
    }
}
