//! Self-contained HTML pages: `report.html` (written next to `report.json`), `compare.html`
//! (`iot-sim report compare`) and the admin server's live dashboard. One page template and one
//! chart script (`web/`, embedded with `include_str!`) serve all three; the data goes inline
//! as JSON, so a report opens offline and makes no request at all (its Content-Security-Policy
//! forbids any).

use serde::Serialize;

const PAGE: &str = include_str!("../../web/page.html");
const STYLE: &str = include_str!("../../web/style.css");
const CHARTS: &str = include_str!("../../web/charts.js");
const REPORT_JS: &str = include_str!("../../web/report.js");
const COMPARE_JS: &str = include_str!("../../web/compare.js");
const DASHBOARD_JS: &str = include_str!("../../web/dashboard.js");

/// Offline pages: nothing may be fetched, not even an image.
const CSP_OFFLINE: &str =
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:";
/// The dashboard talks to the server that sent it, and to nothing else.
const CSP_DASHBOARD: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; connect-src 'self'";

/// `report.html` for a report.
pub fn report(r: &super::Report) -> String {
    page(&format!("iot-sim report {}", r.run_id), CSP_OFFLINE, &json_for_script(r), REPORT_JS)
}

/// `compare.html` for what `report compare` found.
pub fn compare<T: Serialize>(c: &T) -> String {
    page("iot-sim report compare", CSP_OFFLINE, &json_for_script(c), COMPARE_JS)
}

/// The live dashboard (`GET /` of the admin server); `run` is the run's identity.
pub fn dashboard<T: Serialize>(run: &T) -> String {
    page("iot-sim dashboard", CSP_DASHBOARD, &json_for_script(run), DASHBOARD_JS)
}

fn page(title: &str, csp: &str, data: &str, app: &str) -> String {
    // Each part is substituted once, in order, so text inside one part is never taken for a
    // later placeholder.
    let mut out =
        String::with_capacity(PAGE.len() + STYLE.len() + CHARTS.len() + app.len() + data.len());
    let mut rest = PAGE;
    let parts: [(&str, &str); 7] = [
        ("{{CSP}}", csp),
        ("{{TITLE}}", &escape_html(title)),
        ("{{STYLE}}", STYLE),
        ("{{TITLE}}", &escape_html(title)),
        ("{{DATA}}", data),
        ("{{CHARTS}}", CHARTS),
        ("{{APP}}", app),
    ];
    for (mark, with) in parts {
        match rest.find(mark) {
            Some(i) => {
                out.push_str(&rest[..i]);
                out.push_str(with);
                rest = &rest[i + mark.len()..];
            }
            None => unreachable!("web/page.html has every placeholder in order"),
        }
    }
    out.push_str(rest);
    out
}

/// JSON safe inside `<script type="application/json">`: no `<`, `>` or `&` (a device type
/// or log line holding `</script>` must not end the element).
fn json_for_script<T: Serialize>(v: &T) -> String {
    let json = serde_json::to_string(v).unwrap_or_else(|e| {
        serde_json::json!({ "error": format!("cannot encode the report: {e}") }).to_string()
    });
    json.replace('<', "\\u003c").replace('>', "\\u003e").replace('&', "\\u0026")
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_json_cannot_close_its_script_element() {
        let page = compare(&serde_json::json!({ "device_type": "</script><script>alert(1)" }));
        assert!(!page.contains("</script><script>alert(1)"));
        assert!(page.contains("\\u003c/script\\u003e"));
        let data = page.split("<script type=\"application/json\" id=\"data\">").nth(1).unwrap();
        let json = data.split("</script>").next().unwrap();
        let back: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back["device_type"], "</script><script>alert(1)");
    }

    #[test]
    fn an_offline_page_references_nothing_outside_itself() {
        let page = compare(&serde_json::json!({}));
        assert!(page.contains("default-src 'none'"));
        for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url("] {
            assert!(!page.contains(external), "{external}");
        }
        assert!(!page.contains("{{"), "every placeholder is filled");
    }
}
