//! Streamed CSV: a push parser (`csv-core`) fed chunk by chunk as the body
//! arrives, so a million rows never sit in memory, with the line number of
//! every record for error reports; and the mapping of a row to a contact or
//! a do-not-call number.
//!
//! Contacts CSV: a header row; a `number` column (E.164, formatting allowed),
//! an optional `timezone` column (IANA), every other column a variable for
//! the agent (`first_name` -> `{"first_name": "Ada"}`).

use std::collections::BTreeMap;

use csv_core::{ReadRecordResult, Reader};

use crate::e164;
use crate::store::contacts::NewContact;

/// The longest record accepted, in bytes.
const MAX_RECORD_BYTES: usize = 64 * 1024;

/// A problem with one row, by its line number in the file (1 is the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub message: String,
}

/// A record, or why it could not be read.
pub type Record<'a> = Result<Vec<&'a str>, &'static str>;

/// A CSV push parser.
pub struct CsvStream {
    rdr: Reader,
    out: Vec<u8>,
    ends: Vec<usize>,
    outlen: usize,
    endlen: usize,
    /// Line the current record started on.
    start_line: u64,
    done: bool,
    /// The last line read; past it the parser stops (blank lines count).
    last_line: u64,
    /// The first line not read because of `last_line`.
    capped: Option<u64>,
}

impl Default for CsvStream {
    fn default() -> Self {
        Self::new()
    }
}

impl CsvStream {
    pub fn new() -> Self {
        Self {
            rdr: Reader::new(),
            out: vec![0; 1024],
            ends: vec![0; 32],
            outlen: 0,
            endlen: 0,
            start_line: 1,
            done: false,
            last_line: u64::MAX,
            capped: None,
        }
    }

    /// A parser that reads lines 1 to `last_line` only. Every line counts,
    /// blank ones too (they make no record), so a body of blank lines
    /// stops there as surely as one of rows.
    pub fn with_last_line(last_line: u64) -> Self {
        Self {
            last_line,
            ..Self::new()
        }
    }

    /// The first line left unread because of the cap, once reached.
    pub fn capped(&self) -> Option<u64> {
        self.capped
    }

    /// Feeds a chunk; calls `sink(line, record)` for each complete record.
    pub fn feed(&mut self, chunk: &[u8], sink: &mut impl FnMut(u64, Record<'_>)) {
        self.run(chunk, sink);
    }

    /// The line the parser has reached (blank lines count).
    pub fn line(&self) -> u64 {
        self.rdr.line()
    }

    /// Ends the input, flushing a last record without a line break.
    pub fn finish(&mut self, sink: &mut impl FnMut(u64, Record<'_>)) {
        self.run(&[], sink);
    }

    fn run(&mut self, mut input: &[u8], sink: &mut impl FnMut(u64, Record<'_>)) {
        let eof = input.is_empty();
        // Each pass consumes input, fills a buffer or ends a record, so the
        // passes are bounded by the input length plus buffer growths.
        while !self.done {
            // An empty slice means end of input to the parser: stop at the
            // end of a chunk unless this is the end.
            if input.is_empty() && !eof {
                return;
            }
            if self.outlen == 0 && self.endlen == 0 {
                self.start_line = self.rdr.line();
            }
            let (res, nin, nout, nend) = self.rdr.read_record(
                input,
                &mut self.out[self.outlen..],
                &mut self.ends[self.endlen..],
            );
            input = &input[nin..];
            self.outlen += nout;
            self.endlen += nend;
            // A line break past the last line was read (a record, or blank
            // lines csv-core skips without a record), or a record starts
            // past it: stop before handing it out.
            let past = self.rdr.line() > self.last_line.saturating_add(1)
                || (matches!(res, ReadRecordResult::Record) && self.start_line > self.last_line);
            if past {
                self.capped = Some(self.last_line.saturating_add(1));
                self.done = true;
                return;
            }
            match res {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull => {
                    if self.out.len() >= MAX_RECORD_BYTES {
                        // Skip the rest of this record: report it once.
                        sink(self.start_line, Err("the row is too long"));
                        self.rdr.reset();
                        self.outlen = 0;
                        self.endlen = 0;
                        self.skip_line(&mut input);
                        continue;
                    }
                    let len = self.out.len() * 2;
                    self.out.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    if self.ends.len() >= 1024 {
                        sink(self.start_line, Err("the row has too many columns"));
                        self.rdr.reset();
                        self.outlen = 0;
                        self.endlen = 0;
                        self.skip_line(&mut input);
                        continue;
                    }
                    let len = self.ends.len() * 2;
                    self.ends.resize(len, 0);
                }
                ReadRecordResult::Record => {
                    let line = self.start_line;
                    let data = &self.out[..self.outlen];
                    let mut fields = Vec::with_capacity(self.endlen);
                    let mut start = 0;
                    let mut bad = false;
                    for &end in &self.ends[..self.endlen] {
                        match std::str::from_utf8(&data[start..end]) {
                            Ok(s) => fields.push(s),
                            Err(_) => bad = true,
                        }
                        start = end;
                    }
                    if bad {
                        sink(line, Err("the row is not UTF-8"));
                    } else {
                        sink(line, Ok(fields));
                    }
                    self.outlen = 0;
                    self.endlen = 0;
                }
                ReadRecordResult::End => self.done = true,
            }
        }
    }

    /// Drops input up to and including the next line break.
    fn skip_line(&mut self, input: &mut &[u8]) {
        match input.iter().position(|b| *b == b'\n') {
            Some(i) => *input = &input[i + 1..],
            None => *input = &[],
        }
    }
}

/// Where the columns of a contacts CSV are.
#[derive(Debug, Clone)]
pub struct ContactColumns {
    number: usize,
    timezone: Option<usize>,
    variables: Vec<(usize, String)>,
}

impl ContactColumns {
    /// Reads the header row.
    pub fn from_header(header: &[&str]) -> Result<Self, String> {
        let names: Vec<String> = header.iter().map(|h| h.trim().to_lowercase()).collect();
        let number = names
            .iter()
            .position(|h| h == "number" || h == "phone" || h == "phone_number")
            .ok_or("the header row needs a `number` column")?;
        let timezone = names.iter().position(|h| h == "timezone");
        let variables = names
            .iter()
            .enumerate()
            .filter(|(i, h)| *i != number && Some(*i) != timezone && !h.is_empty())
            .map(|(i, h)| (i, h.clone()))
            .collect();
        Ok(Self {
            number,
            timezone,
            variables,
        })
    }

    /// Turns a row into a contact.
    pub fn contact(&self, line: u64, row: &[&str]) -> Result<NewContact, RowError> {
        let variables: BTreeMap<&str, &str> = self
            .variables
            .iter()
            .filter_map(|(i, name)| row.get(*i).map(|v| (name.as_str(), *v)))
            .collect();
        let variables = serde_json::to_string(&variables).map_err(|e| RowError {
            line,
            field: "variables".into(),
            message: e.to_string(),
        })?;
        contact(
            line,
            row.get(self.number).copied().unwrap_or(""),
            self.timezone.and_then(|i| row.get(i)).copied(),
            variables,
        )
    }
}

/// Validates and normalizes one contact: E.164 number, the zone given or the
/// one the number pins down.
pub fn contact(
    line: u64,
    number: &str,
    timezone: Option<&str>,
    variables: String,
) -> Result<NewContact, RowError> {
    let err = |field: &str, message: String| RowError {
        line,
        field: field.into(),
        message,
    };
    let number = e164::normalize(number).map_err(|m| err("number", m))?;
    let timezone = match timezone.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => {
            let tz: chrono_tz::Tz = t
                .parse()
                .map_err(|_| err("timezone", "not an IANA time zone".into()))?;
            Some(tz.name().to_string())
        }
        None => super::window::zone_for_number(&number).map(|z| z.name().to_string()),
    };
    Ok(NewContact {
        number,
        timezone,
        variables,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_in_chunks(text: &str, size: usize) -> Vec<(u64, Result<Vec<String>, &'static str>)> {
        let mut got = Vec::new();
        let mut sink = |line: u64, r: Record<'_>| {
            got.push((line, r.map(|f| f.iter().map(|s| s.to_string()).collect())));
        };
        let mut s = CsvStream::new();
        for chunk in text.as_bytes().chunks(size) {
            s.feed(chunk, &mut sink);
        }
        s.finish(&mut sink);
        got
    }

    #[test]
    fn records_keep_their_line_numbers_across_chunks() {
        let text = "number,name\n+14155552671,Ada\n\"+44 20 7946 0958\",\"Grace\nHopper\"\n+33142685300,Jean";
        for size in [1, 3, 7, 1000] {
            let got = parse_in_chunks(text, size);
            let lines: Vec<u64> = got.iter().map(|g| g.0).collect();
            assert_eq!(lines, [1, 2, 3, 5], "chunk size {size}");
            assert_eq!(got[2].1.as_ref().unwrap()[1], "Grace\nHopper");
            assert_eq!(got[3].1.as_ref().unwrap()[1], "Jean");
        }
    }

    #[test]
    fn the_line_cap_counts_blank_lines() {
        for body in [
            "h\na\nb\nc\n",
            "h\n\n\n\nc\n",
            "h\n,\n,\n,\nc",
            "h\na\nb\nc",
        ] {
            let mut p = CsvStream::with_last_line(3);
            let mut seen = Vec::new();
            let mut sink = |line: u64, r: Record<'_>| seen.push((line, r.map(|f| f.join("|"))));
            for b in body.as_bytes().chunks(2) {
                p.feed(b, &mut sink);
            }
            p.finish(&mut sink);
            assert_eq!(p.capped(), Some(4), "{body:?}: {seen:?}");
            assert!(
                seen.iter().all(|(_, r)| r.as_deref() != Ok("c")),
                "{body:?}: {seen:?}"
            );
        }
        let mut p = CsvStream::with_last_line(3);
        let mut n = 0;
        p.feed(b"h\na\nb\n", &mut |_, _| n += 1);
        p.finish(&mut |_, _| n += 1);
        assert_eq!((n, p.capped()), (3, None));
    }

    #[test]
    fn rows_become_contacts_or_errors() {
        let cols = ContactColumns::from_header(&["Number", "timezone", "first_name"]).unwrap();
        let c = cols.contact(2, &["+1 (212) 555-0100", "", "Ada"]).unwrap();
        assert_eq!(c.number, "+12125550100");
        assert_eq!(c.timezone.as_deref(), Some("America/New_York"));
        assert_eq!(c.variables, r#"{"first_name":"Ada"}"#);
        let c = cols
            .contact(3, &["+12125550100", "Asia/Tokyo", "x"])
            .unwrap();
        assert_eq!(c.timezone.as_deref(), Some("Asia/Tokyo"));
        let e = cols.contact(4, &["12", "", ""]).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (4, "number"));
        let e = cols
            .contact(5, &["+12125550100", "Nowhere/Else", ""])
            .unwrap_err();
        assert_eq!(e.field, "timezone");
        assert!(ContactColumns::from_header(&["name"]).is_err());
    }
}
