//! Value types of personal data. Each `parse` trims nothing silently except surrounding
//! whitespace of names, and refuses anything a registry or a clinician would reject.

use chrono::NaiveDate;
use serde::Serialize;

use super::FieldError;

const NAME_MAX_CHARS: usize = 100;
/// The longest e-mail address (RFC 5321's path limit less the angle brackets).
pub const EMAIL_MAX_CHARS: usize = 254;
/// A bare e-mail address: the WHATWG HTML "valid e-mail address" (what a browser's
/// `<input type=email>` accepts), with a dotted domain. One pattern for the check here and
/// for the OpenAPI document (`http/src/contract.rs`); ECMA-262 and Rust's regex read it alike.
pub const EMAIL_PATTERN: &str = r"^[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+$";

/// A person's name part (first, middle or last name): 1–100 characters after trimming, no
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct PersonName(String);

impl PersonName {
    /// Wraps a value read back from the store, where only parsed values are ever written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        bounded_text(field, raw, NAME_MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A doctor's specialty: 1–100 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Specialty(String);

impl Specialty {
    /// Wraps a value read back from the store, where only parsed values are ever written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        bounded_text(field, raw, NAME_MAX_CHARS).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn bounded_text(field: &str, raw: &str, max_chars: usize) -> Result<String, FieldError> {
    line(raw, max_chars).map_err(|problem| {
        FieldError::new(
            field,
            match problem {
                LineProblem::Control => "must not contain control characters".to_owned(),
                LineProblem::Blank => "must not be empty".to_owned(),
                LineProblem::TooLong => format!("must be at most {max_chars} characters"),
            },
        )
    })
}

/// What is wrong with a one-line text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineProblem {
    /// A control character (Unicode Cc) anywhere, surrounding white space included.
    Control,
    /// Nothing but white space.
    Blank,
    /// More than the maximum number of characters, as sent.
    TooLong,
}

/// The one rule of every one-line text (names, specialty, titles, reasons): no control
/// character anywhere, at most `max_chars` characters as sent, something besides white
/// space; stored trimmed. The OpenAPI document states the same rule as a pattern and a
/// `maxLength` (`http/src/contract.rs`).
pub(crate) fn line(raw: &str, max_chars: usize) -> Result<String, LineProblem> {
    if raw.chars().any(char::is_control) {
        return Err(LineProblem::Control);
    }
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(LineProblem::Blank);
    }
    if raw.chars().count() > max_chars {
        return Err(LineProblem::TooLong);
    }
    Ok(trimmed.to_owned())
}

/// A birth date: after 1900-01-01 and not in the future (relative to `today`, UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct BirthDate(NaiveDate);

impl BirthDate {
    pub(crate) fn from_stored(date: NaiveDate) -> Self {
        Self(date)
    }

    pub const EARLIEST_EXCLUSIVE: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
        Some(date) => date,
        None => panic!("1900-01-01 is a valid date"),
    };

    pub fn parse(field: &str, date: NaiveDate, today: NaiveDate) -> Result<Self, FieldError> {
        if date <= Self::EARLIEST_EXCLUSIVE {
            return Err(FieldError::new(field, "must be after 1900-01-01"));
        }
        if date > today {
            return Err(FieldError::new(field, "must not be in the future"));
        }
        Ok(Self(date))
    }

    pub fn date(&self) -> NaiveDate {
        self.0
    }
}

/// An e-mail address (RFC 5322 addr-spec, at most 254 characters).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    /// Wraps a value read back from the store, where only parsed values are ever written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.chars().count() > EMAIL_MAX_CHARS {
            return Err(FieldError::new(
                field,
                format!("must be at most {EMAIL_MAX_CHARS} characters"),
            ));
        }
        static PATTERN: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
            regex::Regex::new(EMAIL_PATTERN).expect("EMAIL_PATTERN is a valid regex")
        });
        if PATTERN.is_match(raw) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(FieldError::new(
                field,
                "must be an e-mail address such as name@example.org",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A SNILS (Russian individual insurance account number): 11 digits whose last two are the
/// checksum of the first nine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Snils(String);

impl Snils {
    /// Wraps a value read back from the store, where only parsed values are ever written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() != 11 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, "must be exactly 11 digits"));
        }
        let digits: Vec<u32> = raw.bytes().map(|b| u32::from(b - b'0')).collect();
        let expected = digits[9] * 10 + digits[10];
        if Self::checksum(&digits[..9]) != expected {
            return Err(FieldError::new(field, "has an invalid checksum"));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Returns the control number of the first nine digits: the sum of each digit times its
    /// weight (9 down to 1), reduced modulo 101, with 100 written as 00.
    fn checksum(first_nine: &[u32]) -> u32 {
        let sum: u32 = first_nine
            .iter()
            .zip((1..=9).rev())
            .map(|(digit, weight)| digit * weight)
            .sum();
        match sum {
            0..=99 => sum,
            100 | 101 => 0,
            _ => match sum % 101 {
                100 => 0,
                rest => rest,
            },
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A compulsory medical insurance (OMS) policy number of the unified format: 16 digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct OmsPolicy(String);

impl OmsPolicy {
    /// Wraps a value read back from the store, where only parsed values are ever written.
    pub(crate) fn from_stored(value: String) -> Self {
        Self(value)
    }

    pub fn parse(field: &str, raw: &str) -> Result<Self, FieldError> {
        if raw.len() != 16 || !raw.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FieldError::new(field, "must be exactly 16 digits"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snils_checksums_follow_the_pension_fund_rule() {
        // 112-233-445 95: 1*9+1*8+2*7+2*6+3*5+3*4+4*3+4*2+5*1 = 95.
        assert!(Snils::parse("snils", "11223344595").is_ok());
        assert!(Snils::parse("snils", "11223344596").is_err());
        assert!(Snils::parse("snils", "1122334459").is_err());
        assert!(Snils::parse("snils", "112-233-445").is_err());
    }

    #[test]
    fn snils_checksum_wraps_at_100_and_101() {
        // 9*9 + 2*8 + 3*1 = 100 -> 00; 9*9 + 2*8 + 4*1 = 101 -> 00.
        assert!(Snils::parse("snils", "92000000300").is_ok());
        assert!(Snils::parse("snils", "92000000400").is_ok());
        // 9*(9+8+...+1) = 405; 405 mod 101 = 1.
        assert!(Snils::parse("snils", "99999999901").is_ok());
        // 81 + 72 + 42 + 6 = 201; 201 mod 101 = 100 -> 00.
        assert!(Snils::parse("snils", "99600000600").is_ok());
        assert!(Snils::parse("snils", "99600000601").is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            PersonName::parse("firstName", "  Анна ").unwrap().as_str(),
            "Анна"
        );
        assert!(PersonName::parse("firstName", "   ").is_err());
        assert!(PersonName::parse("firstName", &"я".repeat(100)).is_ok());
        assert!(PersonName::parse("firstName", &"я".repeat(101)).is_err());
        assert!(PersonName::parse("firstName", "a\u{0007}b").is_err());
    }

    #[test]
    fn birth_dates_are_bounded() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 24).unwrap();
        let parse = |y, m, d| {
            BirthDate::parse(
                "birthDate",
                NaiveDate::from_ymd_opt(y, m, d).unwrap(),
                today,
            )
        };
        assert!(parse(1900, 1, 1).is_err());
        assert!(parse(1900, 1, 2).is_ok());
        assert!(parse(2026, 11, 24).is_ok());
        assert!(parse(2026, 11, 25).is_err());
    }

    #[test]
    fn emails_are_bare_addresses() {
        assert!(Email::parse("email", "anna@example.org").is_ok());
        assert!(Email::parse("email", "Anna <anna@example.org>").is_err());
        assert!(Email::parse("email", "anna@").is_err());
        assert!(Email::parse("email", "anna").is_err());
        assert!(
            Email::parse("email", "anna@localhost").is_err(),
            "a dotted domain"
        );
        assert!(
            Email::parse("email", " anna@example.org").is_err(),
            "as sent, untrimmed"
        );
        assert!(Email::parse("email", "a.b+tag@mail.example.org").is_ok());
    }

    #[test]
    fn oms_policies_are_sixteen_digits() {
        assert!(OmsPolicy::parse("omsPolicy", "1234567890123456").is_ok());
        assert!(OmsPolicy::parse("omsPolicy", "123456789012345").is_err());
        assert!(OmsPolicy::parse("omsPolicy", "123456789012345a").is_err());
    }
}
