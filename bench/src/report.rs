//! What a run found: one [`Scenario`] per scenario, each a few [`Row`]s of
//! a figure of Tidings beside the limit it is compared with (measured in the
//! same run) and their ratio, printed as a table and written as JSON and
//! Markdown.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::procfs::Machine;

/// How a target compares a figure: below or above a bound.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtMost,
    AtLeast,
}

/// A target of the issue, and whether this run met it.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub text: String,
    /// What is held to the bound: the figure itself or the ratio.
    pub on_ratio: bool,
    pub bound: Bound,
    pub value: f64,
    pub met: bool,
}

/// One figure of Tidings (or of a peer), with the limit it is compared with.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub measure: String,
    pub value: f64,
    pub unit: String,
    /// The limit measured in the same run: what it is, and its value (same
    /// unit as `value`).
    pub limit: Option<(String, f64)>,
    pub ratio: Option<f64>,
    pub target: Option<Target>,
}

impl Row {
    pub fn new(measure: impl Into<String>, value: f64, unit: &str) -> Row {
        Row {
            measure: measure.into(),
            value,
            unit: unit.to_owned(),
            limit: None,
            ratio: None,
            target: None,
        }
    }

    /// Compares with a limit measured in the same run; the ratio is
    /// `value / limit`.
    pub fn against(mut self, what: impl Into<String>, limit: f64) -> Row {
        self.ratio = crate::stats::ratio(self.value, limit);
        self.limit = Some((what.into(), limit));
        self
    }

    /// Holds the figure itself to a bound.
    pub fn target(mut self, bound: Bound, value: f64, text: impl Into<String>) -> Row {
        let met = meets(self.value, bound, value);
        self.target = Some(Target {
            text: text.into(),
            on_ratio: false,
            bound,
            value,
            met,
        });
        self
    }

    /// Holds the ratio to a bound.
    pub fn ratio_target(mut self, bound: Bound, value: f64, text: impl Into<String>) -> Row {
        let met = self.ratio.is_some_and(|r| meets(r, bound, value));
        self.target = Some(Target {
            text: text.into(),
            on_ratio: true,
            bound,
            value,
            met,
        });
        self
    }
}

fn meets(figure: f64, bound: Bound, value: f64) -> bool {
    figure.is_finite()
        && match bound {
            Bound::AtMost => figure <= value,
            Bound::AtLeast => figure >= value,
        }
}

/// What one scenario found, or why it could not run.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub id: String,
    pub title: String,
    pub rows: Vec<Row>,
    /// Every figure measured, for whoever wants more than the table.
    pub details: serde_json::Value,
    pub notes: Vec<String>,
    pub error: Option<String>,
    pub seconds: f64,
}

impl Scenario {
    pub fn new(id: &str, title: &str) -> Scenario {
        Scenario {
            id: id.to_owned(),
            title: title.to_owned(),
            rows: Vec::new(),
            details: serde_json::Value::Null,
            notes: Vec::new(),
            error: None,
            seconds: 0.0,
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub mode: String,
    pub started_at: String,
    pub finished_at: String,
    pub commit: Option<String>,
    pub machine: Machine,
    pub setup: Vec<String>,
    pub scenarios: Vec<Scenario>,
}

/// A figure as the table shows it: three significant digits or so.
pub fn figure(value: f64) -> String {
    let magnitude = value.abs();
    if value.is_nan() {
        "—".to_owned()
    } else if value.is_infinite() {
        // A latency of what never came.
        "∞".to_owned()
    } else if magnitude >= 1000.0 {
        let whole = value.round() as i64;
        // Thousands separated by a comma, as the README writes figures.
        let digits = whole.abs().to_string();
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if whole < 0 {
            format!("-{grouped}")
        } else {
            grouped
        }
    } else if magnitude >= 100.0 {
        format!("{value:.0}")
    } else if magnitude >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// A ratio with two significant digits at least: a small one must not
/// read as zero.
pub fn ratio(r: f64) -> String {
    let magnitude = r.abs();
    if !r.is_finite() {
        "—".to_owned()
    } else if magnitude >= 10.0 {
        format!("{r:.1}")
    } else if magnitude >= 0.1 || magnitude == 0.0 {
        format!("{r:.2}")
    } else {
        // Digits down to the second significant one.
        let decimals = (-magnitude.log10()).floor() as usize + 2;
        format!("{r:.decimals$}")
    }
}

fn with_unit(value: f64, unit: &str) -> String {
    if unit.is_empty() {
        figure(value)
    } else {
        format!("{} {unit}", figure(value))
    }
}

impl Row {
    fn cells(&self) -> [String; 5] {
        let limit = self.limit.as_ref().map_or_else(
            || "—".to_owned(),
            |(what, v)| format!("{what}: {}", with_unit(*v, &self.unit)),
        );
        let ratio = self
            .ratio
            .map_or_else(|| "—".to_owned(), |r| format!("{}×", ratio(r)));
        let target = self.target.as_ref().map_or_else(
            || "—".to_owned(),
            |t| format!("{} {}", t.text, if t.met { "✔" } else { "✘" }),
        );
        [
            self.measure.clone(),
            with_unit(self.value, &self.unit),
            limit,
            ratio,
            target,
        ]
    }
}

/// The markers of the generated block in the README.
pub const README_BEGIN: &str = "<!-- bench results: written by scripts/bench -->";
pub const README_END: &str = "<!-- end of bench results -->";

const HEADER: [&str; 6] = [
    "scenario",
    "measure",
    "Tidings",
    "limit (same run)",
    "ratio",
    "target",
];

impl Report {
    fn table_rows(&self) -> Vec<[String; 6]> {
        let mut rows = Vec::new();
        for scenario in &self.scenarios {
            if let Some(error) = &scenario.error {
                rows.push([
                    scenario.title.clone(),
                    format!("did not run: {error}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            for (i, row) in scenario.rows.iter().enumerate() {
                let [measure, value, limit, ratio, target] = row.cells();
                let title = if i == 0 {
                    scenario.title.clone()
                } else {
                    String::new()
                };
                rows.push([title, measure, value, limit, ratio, target]);
            }
        }
        rows
    }

    /// The table for a terminal: aligned columns.
    pub fn text_table(&self) -> String {
        let rows = self.table_rows();
        let mut widths = HEADER.map(|h| h.chars().count());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (cell, w) in cells.iter().zip(widths) {
                let pad = w - cell.chars().count();
                let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(&HEADER.map(str::to_owned));
        out.push_str(&line(&widths.map(|w| "-".repeat(w))));
        for row in &rows {
            out.push_str(&line(row));
        }
        out
    }

    fn markdown_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(HEADER.len()));
        for row in self.table_rows() {
            let cells: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    /// The table in Markdown, with the machine and the notes.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Tidings benchmark ({} run), {} to {}{}.\n",
            self.mode,
            self.started_at,
            self.finished_at,
            self.commit
                .as_ref()
                .map(|c| format!(", commit `{c}`"))
                .unwrap_or_default()
        );
        let _ = writeln!(out, "Machine: {}.\n", self.machine.describe());
        for line in &self.setup {
            let _ = writeln!(out, "- {line}");
        }
        out.push('\n');
        out.push_str(&self.markdown_table());
        out.push_str("\nRatios are Tidings over the limit measured beside it in the same run.\n");
        let noted: Vec<&Scenario> = self
            .scenarios
            .iter()
            .filter(|s| !s.notes.is_empty())
            .collect();
        if !noted.is_empty() {
            out.push_str("\nNotes:\n");
            for scenario in noted {
                for note in &scenario.notes {
                    let _ = writeln!(out, "- {}: {note}", scenario.title);
                }
            }
        }
        out
    }

    /// The block of the README's "Performance" section: the machine, the
    /// table, and the plots (paths as written, relative to the README).
    pub fn readme_block(&self, results: &Path, plots: &[std::path::PathBuf]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Latest full run: {}{}, on {}. Notes and every figure: [`{}`]({}) and `results.json` beside it.\n",
            self.finished_at,
            self.commit
                .as_ref()
                .map(|c| format!(" (commit `{c}`)"))
                .unwrap_or_default(),
            self.machine.describe(),
            results.join("results.md").display(),
            results.join("results.md").display(),
        );
        out.push_str(&self.markdown_table());
        if !plots.is_empty() {
            out.push('\n');
            for plot in plots {
                let name = plot
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let _ = writeln!(out, "![{name}]({})", plot.display());
            }
        }
        out
    }

    /// Replaces what stands between [`README_BEGIN`] and [`README_END`] in
    /// `readme` with [`Report::readme_block`].
    pub fn update_readme(
        &self,
        readme: &Path,
        results: &Path,
        plots: &[std::path::PathBuf],
    ) -> anyhow::Result<()> {
        let text = std::fs::read_to_string(readme)
            .with_context(|| format!("reading {}", readme.display()))?;
        let (Some(begin), Some(end)) = (text.find(README_BEGIN), text.find(README_END)) else {
            anyhow::bail!(
                "{} has no {README_BEGIN} … {README_END} block",
                readme.display()
            );
        };
        let updated = format!(
            "{}{README_BEGIN}\n{}{}",
            &text[..begin],
            self.readme_block(results, plots),
            &text[end..]
        );
        std::fs::write(readme, updated)?;
        Ok(())
    }

    /// Writes `results.json` and `results.md` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(dir.join("results.json"), json)?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_the_readme() {
        assert_eq!(figure(12345.6), "12,346");
        assert_eq!(figure(123.4), "123");
        assert_eq!(figure(12.34), "12.3");
        assert_eq!(figure(1.234), "1.23");
    }

    #[test]
    fn a_small_ratio_keeps_two_digits() {
        assert_eq!(ratio(0.0023), "0.0023");
        assert_eq!(ratio(0.043), "0.043");
        assert_eq!(ratio(0.43), "0.43");
        assert_eq!(ratio(143.35), "143.3");
    }

    #[test]
    fn a_ratio_target_is_met_or_not() {
        let row = Row::new("x", 8.0, "/s").against("raw", 10.0).ratio_target(
            Bound::AtLeast,
            0.8,
            "≥ 80 % of raw",
        );
        assert!(row.target.unwrap().met);
        let row = Row::new("x", 6.0, "ms").target(Bound::AtMost, 5.0, "p50 ≤ 5 ms");
        assert!(!row.target.unwrap().met);
    }
}
