//! Output of the traffic commands (`route`, `canary`, `stat`): aligned
//! tables (colour only on a terminal, never with `NO_COLOR`), and stable
//! JSON / YAML for scripts.

use std::io::{IsTerminal, Write};

use serde::Serialize;

/// `-o` of the traffic commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns for people (default).
    #[default]
    Table,
    /// YAML.
    Yaml,
    /// JSON (pretty, stable field order).
    Json,
}

/// Whether stdout gets ANSI colours: a terminal, and `NO_COLOR` unset.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Colours of table cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paint {
    /// As is.
    Plain,
    /// Bold (headers).
    Bold,
    /// Green (healthy).
    Green,
    /// Red (failing).
    Red,
    /// Yellow (in between).
    Yellow,
}

impl Paint {
    fn code(self) -> Option<&'static str> {
        match self {
            Self::Plain => None,
            Self::Bold => Some("1"),
            Self::Green => Some("32"),
            Self::Red => Some("31"),
            Self::Yellow => Some("33"),
        }
    }
}

/// A table: headers and rows of cells, each with a colour.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<(String, Paint)>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row of plain cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| (c, Paint::Plain)).collect());
    }

    /// Adds a row of coloured cells.
    pub fn painted_row(&mut self, cells: Vec<(String, Paint)>) {
        self.rows.push(cells);
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text; `colour` adds ANSI codes (padding is computed on
    /// the plain text, so columns stay aligned).
    pub fn render(&self, colour: bool) -> String {
        let cols = self.headers.len();
        let mut width = vec![0; cols];
        for (i, h) in self.headers.iter().enumerate() {
            width[i] = h.chars().count();
        }
        for r in &self.rows {
            for (i, (c, _)) in r.iter().enumerate().take(cols) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<(String, Paint)> = self
            .headers
            .iter()
            .map(|h| (h.clone(), Paint::Bold))
            .collect();
        for r in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (c, p)) in r.iter().enumerate().take(cols) {
                let last = i + 1 == cols;
                let pad = if last {
                    0
                } else {
                    width[i] - c.chars().count() + 2
                };
                match p.code().filter(|_| colour) {
                    Some(code) => line.push_str(&format!("\x1b[{code}m{c}\x1b[0m")),
                    None => line.push_str(c),
                }
                line.push_str(&" ".repeat(pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `value` as pretty JSON with a final newline.
pub fn json<T: Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value)
        .map(|mut s| {
            s.push('\n');
            s
        })
        .map_err(|e| e.to_string())
}

/// `value` as YAML.
pub fn yaml<T: Serialize>(value: &T) -> Result<String, String> {
    serde_yaml::to_string(value).map_err(|e| e.to_string())
}

/// `value` as JSON or YAML per `output` (table callers render themselves).
pub fn structured<T: Serialize>(value: &T, output: Output) -> Result<String, String> {
    match output {
        Output::Yaml => yaml(value),
        Output::Json | Output::Table => json(value),
    }
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
pub fn print(text: &str) {
    let _ = std::io::stdout().write_all(text.as_bytes());
    let _ = std::io::stdout().flush();
}

/// A progress line on stderr (stdout stays machine-readable).
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// `12.3%`, or `-`.
pub fn percent(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}%"))
}

/// `12.3ms`, or `-`.
pub fn millis(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| {
        if v >= 100.0 {
            format!("{v:.0}ms")
        } else {
            format!("{v:.2}ms")
        }
    })
}

/// `1.5`, or `-`.
pub fn rate(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_colour_does_not_shift_them() {
        let mut t = Table::new(&["NAME", "WEIGHT"]);
        t.row(vec!["stable".into(), "90".into()]);
        t.painted_row(vec![
            ("canary-long".into(), Paint::Red),
            ("10".into(), Paint::Plain),
        ]);
        assert_eq!(
            t.render(false),
            "NAME         WEIGHT\nstable       90\ncanary-long  10\n"
        );
        let coloured = t.render(true);
        assert!(
            coloured.contains("\x1b[31mcanary-long\x1b[0m  10"),
            "{coloured:?}"
        );
    }
}
