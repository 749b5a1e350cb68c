//! Field rules of the request bodies. Each rule returns the normalized value
//! or what is wrong with it; [`Fields`] gathers every failure of a body so a
//! client learns all of them at once.

use crate::error::{ApiError, FieldError};

pub const MAX_EMAIL: usize = 254;
/// Long enough for any passphrase, short enough that hashing it is cheap.
pub const MAX_PASSWORD: usize = 1024;
pub const MIN_PASSWORD: usize = 8;
pub const MAX_DISPLAY_NAME: usize = 64;
pub const MAX_BIO: usize = 500;
pub const MAX_URL: usize = 2048;
/// The longest post or comment, in characters.
pub const MAX_TEXT: usize = 5000;

#[derive(Default)]
pub struct Fields(Vec<FieldError>);

impl Fields {
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.push(FieldError::new(field, message));
                None
            }
        }
    }

    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.0))
        }
    }
}

/// 3 to 32 letters, digits or underscores; kept as typed, unique regardless
/// of case.
pub fn username(value: &str) -> Result<String, String> {
    let value = value.trim();
    let ok_chars = value.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !(3..=32).contains(&value.len()) || !ok_chars {
        return Err("3 to 32 letters, digits or underscores".into());
    }
    Ok(value.to_owned())
}

/// One `@` with something on both sides and a dot in the domain; lowercased.
/// No control characters: PostgreSQL text cannot hold NUL, and an address
/// it cannot store would stop the projector.
pub fn email(value: &str) -> Result<String, String> {
    let value = value.trim().to_lowercase();
    let well_formed = value.len() <= MAX_EMAIL
        && !value.chars().any(|c| c.is_whitespace() || c.is_control())
        && value.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if well_formed {
        Ok(value)
    } else {
        Err("not an email address".into())
    }
}

pub fn password(value: &str) -> Result<String, String> {
    let length = value.chars().count();
    if length < MIN_PASSWORD {
        return Err(format!("at least {MIN_PASSWORD} characters"));
    }
    if value.len() > MAX_PASSWORD {
        return Err(format!("at most {MAX_PASSWORD} bytes"));
    }
    Ok(value.to_owned())
}

pub fn display_name(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty()
        || value.chars().count() > MAX_DISPLAY_NAME
        || value.chars().any(char::is_control)
    {
        return Err(format!("1 to {MAX_DISPLAY_NAME} printable characters"));
    }
    Ok(value.to_owned())
}

/// Characters that show nothing by themselves: zero-width spaces and
/// joiners, direction marks, variation selectors, fillers, the soft hyphen.
/// Kept inside a text (an emoji needs its joiners), but a text of nothing
/// else is blank.
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}' | '\u{1160}' | '\u{17b4}' | '\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{2800}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}'
        | '\u{feff}' | '\u{ffa0}' | '\u{e0000}'..='\u{e007f}')
}

/// Whether `value` shows nothing: white space and [`invisible`]
/// characters alone.
pub fn blank(value: &str) -> bool {
    value.chars().all(|c| c.is_whitespace() || invisible(c))
}

/// The controls that reorder the text around them (right-to-left
/// overrides and isolates): they make a name read as another.
pub fn reorders(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A post's, a comment's or a message's text: not blank (white space and
/// [`invisible`] characters alone are), at most [`MAX_TEXT`] characters, no
/// control characters but line breaks and tabs; trimmed.
pub fn text(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.chars().all(|c| c.is_whitespace() || invisible(c)) || value.chars().count() > MAX_TEXT
    {
        return Err(format!(
            "1 to {MAX_TEXT} characters, not only white space or invisible ones"
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("no control characters but line breaks and tabs".into());
    }
    Ok(value.to_owned())
}

/// Line breaks and tabs are text; other control characters are not (and
/// PostgreSQL text cannot hold NUL).
pub fn bio(value: &str) -> Result<String, String> {
    if value.chars().count() > MAX_BIO {
        return Err(format!("at most {MAX_BIO} characters"));
    }
    if value
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err("no control characters but line breaks and tabs".into());
    }
    Ok(value.trim().to_owned())
}

pub fn url(value: &str) -> Result<String, String> {
    let value = value.trim();
    let scheme_ok = value.starts_with("https://") || value.starts_with("http://");
    if !scheme_ok
        || value.len() > MAX_URL
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("an http(s) URL of at most {MAX_URL} characters"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_of_invisible_characters_is_blank_but_an_emoji_keeps_its_own() {
        for blank in [
            "",
            " \n\t",
            "\u{200b}",
            " \u{200b}\u{feff}\u{2060} ",
            "\u{fe0f}\u{200d}",
        ] {
            assert!(text(blank).is_err(), "{blank:?}");
        }
        assert_eq!(text(" \u{2764}\u{fe0f} ").unwrap(), "\u{2764}\u{fe0f}");
        assert_eq!(
            text("\u{1f469}\u{200d}\u{1f4bb}").unwrap(),
            "\u{1f469}\u{200d}\u{1f4bb}"
        );
        assert!(text(&"x".repeat(MAX_TEXT)).is_ok());
        assert!(text(&"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn emails() {
        assert_eq!(email(" A@B.io ").unwrap(), "a@b.io");
        for bad in [
            "", "a", "a@b", "@b.io", "a@@b.io", "a b@c.io", "a@.io", "a@io.",
        ] {
            assert!(email(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn usernames() {
        assert!(username("al_1").is_ok());
        for bad in ["al", "a-b", "ä123", &"x".repeat(33)] {
            assert!(username(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn urls_and_lengths() {
        assert!(url("https://x.io/a.png").is_ok());
        assert!(url("javascript:alert(1)").is_err());
        assert!(bio(&"x".repeat(MAX_BIO + 1)).is_err());
        assert!(display_name("  ").is_err());
        assert!(password("short").is_err());
        assert!(bio("two\nlines\tand a tab").is_ok());
        assert!(bio("nul\0").is_err());
        assert!(email("a\0b@c.io").is_err());
    }
}
