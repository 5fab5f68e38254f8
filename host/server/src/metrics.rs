//! The Prometheus text exposition format (version 0.0.4): a family's `# HELP` and `# TYPE`
//! lines, then its samples.

use std::fmt::Write as _;

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The answer to `GET /metrics`: the server's own families in `text`, then those every server
/// has (the TLS handshakes this process accepted: with connections pooled and reused, they
/// grow with connections, not with evaluations).
pub fn response(mut text: String) -> Response {
    counter(
        &mut text,
        "quorumvm_tls_handshakes_total",
        "TLS handshakes this server accepted (one per connection).",
        crate::tls::handshakes(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// A counter without labels.
pub fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    labelled(out, name, help, "counter", &[(String::new(), value)]);
}

/// A gauge family: one sample per `(labels, value)`, the labels written as they come
/// (`{custodian="1"}`, or empty).
pub fn gauge(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    labelled(out, name, help, "gauge", values);
}

/// A family of `kind` (`counter`, `gauge`) with one sample per `(labels, value)`.
pub fn labelled(out: &mut String, name: &str, help: &str, kind: &str, values: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in values {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_help_type_then_samples() {
        let mut out = String::new();
        counter(&mut out, "a_total", "As.", 3);
        gauge(&mut out, "b", "Bs.", &[("{x=\"1\"}".into(), 4)]);
        assert_eq!(
            out,
            "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n\
             # HELP b Bs.\n# TYPE b gauge\nb{x=\"1\"} 4\n"
        );
    }
}
