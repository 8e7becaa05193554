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
    let number =
        phonenumber::parse(None, trimmed).map_err(|e| format!("not a phone number: {e}"))?;
    if !phonenumber::is_valid(&number) {
        return Err("not a valid number for its country".into());
    }
    Ok(number.format().mode(phonenumber::Mode::E164).to_string())
}

#[cfg(test)]
mod tests {
    use super::normalize;

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
