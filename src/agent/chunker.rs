//! Cuts streaming LLM text into pieces TTS can speak before the reply is
//! complete: at sentence ends (`.`, `!`, `?`, `…` followed by a space or a
//! newline), and at clause boundaries (`,`, `;`, `:`, dashes) once the piece
//! is long enough to sound natural on its own.
//!
//! Sans-IO: [`Chunker::push`] takes each text delta and returns the pieces
//! it completes; [`Chunker::finish`] flushes the rest when the stream ends.
//! Abbreviations (`Dr.`, `e.g.`) and decimals (`3.5`) do not end a sentence.

/// Sizes that decide when a piece is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerConfig {
    /// A clause boundary cuts only once the piece has this many characters.
    pub min_clause_chars: usize,
    /// Past this many characters a piece is cut at the last space.
    pub max_chars: usize,
}

impl Default for ChunkerConfig {
    fn default() -> Self {
        Self {
            min_clause_chars: 40,
            max_chars: 250,
        }
    }
}

/// The cutter. One per reply.
#[derive(Debug, Default)]
pub struct Chunker {
    config: ChunkerConfig,
    pending: String,
}

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "prof", "st", "sr", "jr", "vs", "etc", "e.g", "i.e", "no", "approx",
];

impl Chunker {
    pub fn new(config: ChunkerConfig) -> Self {
        Self {
            config,
            pending: String::new(),
        }
    }

    /// Adds a delta; returns the pieces it completes, in order.
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.pending.push_str(delta);
        let mut out = Vec::new();
        // Each round removes a non-empty prefix, so this ends.
        while let Some(cut) = self.next_cut() {
            let rest = self.pending.split_off(cut);
            let piece = std::mem::replace(&mut self.pending, rest);
            let trimmed = piece.trim();
            if !trimmed.is_empty() {
                out.push(trimmed.to_string());
            }
            self.pending = self.pending.trim_start().to_string();
        }
        out
    }

    /// The rest of the text at the end of the stream, if any.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.pending);
        let rest = rest.trim();
        (!rest.is_empty()).then(|| rest.to_string())
    }

    /// Byte index just after the first boundary in `pending`, if one is
    /// complete (a boundary needs the character after it to be known).
    fn next_cut(&self) -> Option<usize> {
        let text = &self.pending;
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        let mut last_space = None;
        for (i, &(at, c)) in chars.iter().enumerate() {
            let len = at + c.len_utf8();
            if c.is_whitespace() {
                last_space = Some(at);
            }
            let Some(&(_, next)) = chars.get(i + 1) else {
                break;
            };
            let followed_by_space = next.is_whitespace();
            if c == '\n' && at > 0 {
                return Some(len);
            }
            if matches!(c, '!' | '?' | '…') && followed_by_space {
                return Some(len);
            }
            if c == '.' && followed_by_space && !self.is_abbreviation(at) {
                return Some(len);
            }
            if matches!(c, ',' | ';' | ':' | '—' | '–')
                && followed_by_space
                && text[..at].chars().count() >= self.config.min_clause_chars
            {
                return Some(len);
            }
            if text[..len].chars().count() >= self.config.max_chars
                && let Some(space) = last_space
                && space > 0
            {
                return Some(space);
            }
        }
        None
    }

    /// Whether the `.` at byte `dot` ends an abbreviation or a single letter.
    fn is_abbreviation(&self, dot: usize) -> bool {
        let word = self.pending[..dot]
            .rsplit(char::is_whitespace)
            .next()
            .unwrap_or("")
            .trim_start_matches(['(', '"', '\'']);
        let lower = word.to_lowercase();
        ABBREVIATIONS.contains(&lower.as_str())
            || (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(deltas: &[&str]) -> Vec<String> {
        let mut c = Chunker::default();
        let mut out: Vec<String> = deltas.iter().flat_map(|d| c.push(d)).collect();
        out.extend(c.finish());
        out
    }

    #[test]
    fn sentences_are_cut_as_soon_as_they_end() {
        let mut c = Chunker::default();
        assert!(c.push("Hello there").is_empty());
        assert!(c.push(".").is_empty(), "needs the next character");
        assert_eq!(c.push(" How"), vec!["Hello there."]);
        assert_eq!(c.push(" are you? I"), vec!["How are you?"]);
        assert_eq!(c.finish().as_deref(), Some("I"));
    }

    #[test]
    fn token_by_token_gives_the_same_pieces_as_one_push() {
        let text = "Sure! Your table for four is booked at 7.30 tonight. \
                    Dr. Smith will meet you; see you then.";
        let whole = stream(&[text]);
        let tokens: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_eq!(stream(&refs), whole);
        assert_eq!(
            whole,
            vec![
                "Sure!",
                "Your table for four is booked at 7.30 tonight.",
                "Dr. Smith will meet you; see you then."
            ]
        );
    }

    #[test]
    fn long_clauses_are_cut_at_commas_short_ones_are_not() {
        let out = stream(&[
            "Yes, of course. I have checked the calendar for next week, and Tuesday works",
        ]);
        assert_eq!(
            out,
            vec![
                "Yes, of course.",
                "I have checked the calendar for next week,",
                "and Tuesday works"
            ]
        );
    }

    #[test]
    fn a_run_on_text_is_cut_at_a_space_by_length() {
        let mut c = Chunker::new(ChunkerConfig {
            min_clause_chars: 40,
            max_chars: 20,
        });
        let out = c.push("one two three four five six seven eight");
        assert!(out.iter().all(|p| p.chars().count() <= 20), "{out:?}");
        assert!(!out.is_empty());
    }

    #[test]
    fn newlines_and_initials_and_unicode() {
        assert_eq!(
            stream(&["Line one\nLine two. J. R. R. Tolkien wrote it… Wow"]),
            vec!["Line one", "Line two.", "J. R. R. Tolkien wrote it…", "Wow"]
        );
    }
}
