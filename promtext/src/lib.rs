//! A small writer for the Prometheus text exposition format (version 0.0.4), shared by the
//! HTTP, TFTP and DHCP services so that `# HELP`/`# TYPE` lines, label escaping and histogram
//! buckets are written the same way everywhere.
//!
//! Why not `prometheus-client`: pxeforge keeps its counters as plain atomics and small maps
//! inside each service and only needs them rendered on a scrape. `prometheus-client` wants
//! every metric registered up front as its own `Counter`/`Family`/`Histogram` types, and its
//! encoder writes OpenMetrics (it appends `_total` to counter names itself, adds `# EOF`, and
//! stores histogram observations in its own buckets), so adopting it would mean restructuring
//! all three services and carefully re-deriving today's metric names, which tests and scripts
//! grep for. The format itself is simple enough that this crate is a couple hundred lines
//! with no dependencies.
//!
//! ```
//! use pxeforge_promtext::{Kind, Writer};
//!
//! let mut out = String::new();
//! let mut w = Writer::new(&mut out);
//! let mut f = w.family("demo_requests_total", Kind::Counter, "Requests by route.");
//! f.sample(&[("route", &"/a")], 3u64);
//! f.sample(&[("route", &"/b")], 1u64);
//! w.gauge("demo_active", "Requests in progress.", 0u64);
//! let expected = [
//!     "# HELP demo_requests_total Requests by route.",
//!     "# TYPE demo_requests_total counter",
//!     "demo_requests_total{route=\"/a\"} 3",
//!     "demo_requests_total{route=\"/b\"} 1",
//!     "# HELP demo_active Requests in progress.",
//!     "# TYPE demo_active gauge",
//!     "demo_active 0",
//! ];
//! assert_eq!(out.lines().collect::<Vec<_>>(), expected);
//! ```

use std::fmt::{self, Display, Write as _};

/// The `# TYPE` of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label name/value pairs of one sample. Values are any `Display` and are escaped as they
/// are written; names must already be valid label names.
pub type Labels<'a> = [(&'a str, &'a dyn Display)];

/// A sample value, written the way Prometheus parses it.
pub trait Value {
    fn write_to(&self, out: &mut String);
}

macro_rules! integer_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{self}");
            }
        }
    )*};
}
integer_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        write_f64(out, *self);
    }
}

/// Writes `v` as Prometheus expects: `+Inf`, `-Inf`, `NaN`, or Rust's shortest decimal form
/// (`30`, `0.01`, `100.303`), which never uses exponent notation.
fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Writes metric families into a `String`.
///
/// Each family gets its `# HELP` and `# TYPE` lines once, when it is started with
/// [`Writer::family`]; all of its samples must follow before the next family starts, as the
/// format requires.
pub struct Writer<'o> {
    out: &'o mut String,
}

impl<'o> Writer<'o> {
    /// Appends to `out` (several writers may append to the same page one after another).
    pub fn new(out: &'o mut String) -> Self {
        Writer { out }
    }

    /// Starts a family: writes its `# HELP` and `# TYPE` lines and returns a handle for its
    /// samples. `help` is escaped (`\\` and newline) as the format requires.
    pub fn family<'w, 'n>(&'w mut self, name: &'n str, kind: Kind, help: &str) -> Family<'w, 'n> {
        let out = &mut *self.out;
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        escape_into(out, help, false);
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(kind.as_str());
        out.push('\n');
        Family { out, name }
    }

    /// A counter family with a single unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: impl Value) {
        self.family(name, Kind::Counter, help).sample(&[], value);
    }

    /// A gauge family with a single unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Value) {
        self.family(name, Kind::Gauge, help).sample(&[], value);
    }

    /// A histogram family with a single unlabelled histogram; see [`Family::histogram`].
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        self.family(name, Kind::Histogram, help)
            .histogram(&[], bounds, cumulative, sum, count);
    }
}

/// The samples of one metric family, started by [`Writer::family`].
pub struct Family<'w, 'n> {
    out: &'w mut String,
    name: &'n str,
}

impl Family<'_, '_> {
    /// Writes `name{labels} value`.
    pub fn sample(&mut self, labels: &Labels<'_>, value: impl Value) {
        self.line("", labels, None, &value);
    }

    /// Writes one histogram: a `_bucket` line per upper bound in `bounds` with the matching
    /// cumulative count from `cumulative`, then the `le="+Inf"` bucket (which is `count`),
    /// `_sum` and `_count`. `labels` go on every line, before `le`.
    ///
    /// `bounds` must be increasing and `cumulative` as long as `bounds`; extra entries of
    /// either are ignored.
    pub fn histogram(
        &mut self,
        labels: &Labels<'_>,
        bounds: &[f64],
        cumulative: &[u64],
        sum: f64,
        count: u64,
    ) {
        debug_assert_eq!(bounds.len(), cumulative.len(), "one count per bucket bound");
        for (le, n) in bounds.iter().zip(cumulative) {
            self.line("_bucket", labels, Some(*le), n);
        }
        self.line("_bucket", labels, Some(f64::INFINITY), &count);
        self.line("_sum", labels, None, &sum);
        self.line("_count", labels, None, &count);
    }

    fn line(&mut self, suffix: &str, labels: &Labels<'_>, le: Option<f64>, value: &dyn Value) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                let _ = write!(Escape(out), "{value}");
                out.push('"');
            }
            if let Some(le) = le {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str("le=\"");
                write_f64(out, le);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write_to(out);
        out.push('\n');
    }
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s, true);
    out
}

fn escape_into(out: &mut String, s: &str, quote: bool) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
}

/// Escapes label values as they are formatted, without an intermediate `String`.
struct Escape<'a>(&'a mut String);

impl fmt::Write for Escape<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), "x\\ny");
        assert_eq!(escape_label("/ipxe"), "/ipxe");
        let mut out = String::new();
        Writer::new(&mut out)
            .family("m_total", Kind::Counter, "h")
            .sample(&[("path", &"a\\b\"c\nd"), ("status", &404u16)], 1u64);
        assert!(
            out.ends_with("m_total{path=\"a\\\\b\\\"c\\nd\",status=\"404\"} 1\n"),
            "{out}"
        );
    }

    #[test]
    fn help_text_is_escaped() {
        let mut out = String::new();
        Writer::new(&mut out).gauge("g", "line\\one\nline \"two\"", 1u64);
        assert!(
            out.starts_with("# HELP g line\\\\one\\nline \"two\"\n# TYPE g gauge\n"),
            "{out}"
        );
    }

    #[test]
    fn help_and_type_once_per_family() {
        let mut out = String::new();
        let mut w = Writer::new(&mut out);
        let mut f = w.family("a_total", Kind::Counter, "A.");
        for outcome in ["ok", "failed", "busy"] {
            f.sample(&[("result", &outcome)], 2u64);
        }
        w.gauge("b", "B.", 7u64);
        w.counter("c_total", "C.", 0u64);
        assert_eq!(
            out,
            "# HELP a_total A.\n# TYPE a_total counter\n\
             a_total{result=\"ok\"} 2\n\
             a_total{result=\"failed\"} 2\n\
             a_total{result=\"busy\"} 2\n\
             # HELP b B.\n# TYPE b gauge\nb 7\n\
             # HELP c_total C.\n# TYPE c_total counter\nc_total 0\n"
        );
        for name in ["a_total", "b", "c_total"] {
            let help = format!("# HELP {name} ");
            let ty = format!("# TYPE {name} ");
            assert_eq!(out.matches(&help).count(), 1, "{out}");
            assert_eq!(out.matches(&ty).count(), 1, "{out}");
        }
    }

    #[test]
    fn histogram_shape() {
        let mut out = String::new();
        Writer::new(&mut out).histogram(
            "d_seconds",
            "D.",
            &[0.01, 0.5, 30.0],
            &[1, 2, 2],
            100.303,
            3,
        );
        assert_eq!(
            out,
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{le=\"0.01\"} 1\n\
             d_seconds_bucket{le=\"0.5\"} 2\n\
             d_seconds_bucket{le=\"30\"} 2\n\
             d_seconds_bucket{le=\"+Inf\"} 3\n\
             d_seconds_sum 100.303\n\
             d_seconds_count 3\n"
        );
    }

    #[test]
    fn labelled_histogram_puts_le_last() {
        let mut out = String::new();
        let mut w = Writer::new(&mut out);
        let mut f = w.family("h", Kind::Histogram, "H.");
        f.histogram(&[("svc", &"tftp")], &[1.0], &[0], 0.0, 0);
        assert!(out.contains("h_bucket{svc=\"tftp\",le=\"1\"} 0\n"), "{out}");
        assert!(
            out.contains("h_bucket{svc=\"tftp\",le=\"+Inf\"} 0\n"),
            "{out}"
        );
        assert!(out.contains("h_sum{svc=\"tftp\"} 0\n"), "{out}");
        assert!(out.contains("h_count{svc=\"tftp\"} 0\n"), "{out}");
    }

    #[test]
    fn special_floats() {
        let mut out = String::new();
        let mut w = Writer::new(&mut out);
        w.gauge("a", "A.", f64::INFINITY);
        w.gauge("b", "B.", f64::NEG_INFINITY);
        w.gauge("c", "C.", f64::NAN);
        w.gauge("d", "D.", 1e-7);
        assert!(out.contains("\na +Inf\n"), "{out}");
        assert!(out.contains("\nb -Inf\n"), "{out}");
        assert!(out.contains("\nc NaN\n"), "{out}");
        assert!(out.contains("\nd 0.0000001\n"), "{out}");
    }

    #[test]
    fn appends_to_existing_text() {
        let mut out = String::from("x 1\n");
        Writer::new(&mut out).counter("y_total", "Y.", 2u64);
        assert!(out.starts_with("x 1\n# HELP y_total Y.\n"), "{out}");
    }
}
