//! E.164 phone numbers: validation and normalization with the `phonenumber`
//! crate (libphonenumber's metadata), so `+1 (555) 123-0000` and
//! `+15551230000` are the same number everywhere in the store.

/// Normalizes `input` to E.164 (`+` and digits), or says why it is not one.
/// Numbers must carry their country code: agentline serves many countries and
/// has no default region to guess from.
pub fn normalize(input: &str) -> Result<String, String> {
    let trimmed = input.trim();
    if !trimmed.starts_with('+') {
        return Err("must start with + and the country code".into());
    }
    let number = phonenumber::parse(None, without_punctuation(trimmed))
        .map_err(|e| format!("not a phone number: {e}"))?;
    if !phonenumber::is_valid(&number) {
        return Err("not a valid number for its country".into());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

/// Punctuation libphonenumber allows between digits (its
/// `VALID_PUNCTUATION`, and white space).
fn is_punctuation(c: char) -> bool {
    c.is_whitespace() || "-\u{2010}\u{2011}\u{2012}\u{2013}\u{2014}\u{2015}\u{2212}\u{30FC}\u{FF0D}\u{FF0F}\u{AD}\u{200B}\u{2060}\u{3000}()\u{FF08}\u{FF09}\u{FF3B}\u{FF3D}.[]/~\u{2053}\u{223C}\u{FF5E}".contains(c)
}

/// `+` and the digits alone, when the rest of `input` is only punctuation.
/// libphonenumber strips the punctuation before it reads the country code,
/// so `+813-5550-0115` is +81 3 5550 0115; the `phonenumber` crate reads
/// the digits up to the first dash as the country code instead. Anything
/// else (letters, an extension) is left for the parser to judge.
fn without_punctuation(input: &str) -> String {
    let rest = input.strip_prefix('+').unwrap_or(input);
    if rest
        .chars()
        .all(|c| c.is_ascii_digit() || is_punctuation(c))
    {
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        format!("+{digits}")
    } else {
        input.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;

    /// Punctuation right after the country code, as libphonenumber accepts
    /// it (issue 17).
    #[test]
    fn punctuation_after_the_country_code_is_accepted() {
        assert_eq!(normalize("+813-5550-0115").unwrap(), "+81355500115");
        assert_eq!(normalize("+1212-750-0115").unwrap(), "+12127500115");
        assert_eq!(normalize("+4420-7946-0958").unwrap(), "+442079460958");
        assert_eq!(normalize("+44.20.7946.0958").unwrap(), "+442079460958");
        assert_eq!(normalize("+1 (212) 750-0115").unwrap(), "+12127500115");
        assert!(normalize("+1212-750").is_err());
        assert!(normalize("+--").is_err());
    }

    #[test]
    fn formatting_is_removed() {
        assert_eq!(normalize("+1 (415) 555-2671").unwrap(), "+14155552671");
        assert_eq!(normalize("+44 20 7946 0958").unwrap(), "+442079460958");
    }

    #[test]
    fn numbers_without_country_or_invalid_are_refused() {
        assert!(normalize("4155552671").is_err());
        assert!(normalize("+1 555").is_err());
        assert!(normalize("hello").is_err());
    }
}
