//! Human and JSON output helpers.

use serde::Serialize;

/// Formats nanoseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn time(ns: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp_nanos(ns as i128)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "-".into())
}

/// An RFC 3339 time as `YYYY-MM-DD HH:MM:SS` (UTC), for tables.
pub fn rfc3339_human(t: &str) -> String {
    match time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339) {
        Ok(dt) => time(dt.unix_timestamp_nanos() as i64),
        Err(_) => t.to_owned(),
    }
}

/// A spinner on standard error with `label` and the time elapsed (hidden
/// when standard error is not a terminal).
pub fn progress_bar(label: &str) -> indicatif::ProgressBar {
    let pb = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        indicatif::ProgressBar::new_spinner()
    } else {
        indicatif::ProgressBar::hidden()
    };
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(label.to_owned());
    pb
}

/// Formats a byte count (KiB, MiB, …).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `s` made safe for a terminal: control characters (C0, DEL, C1) and the
/// bidirectional overrides that reorder text are shown as escapes. Paths,
/// authors, messages and names can come from a peer or an agent, and an
/// escape sequence must not reach the user's terminal raw.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x100 && bad(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if bad(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// One line on where a peer stands, from the node's status of it
/// (`sovryn_net::PeerStatus` as JSON): its state and, while connected,
/// what is left each way and how fast it moves.
pub fn peer_line(p: &serde_json::Value) -> String {
    let n = |k: &str| p[k].as_u64().unwrap_or(0);
    let error = p["last_error"].as_str().map(printable);
    match p["state"].as_str().unwrap_or("offline") {
        "connected" => {
            let (rf, rb, rr) = (
                n("to_receive_files"),
                n("to_receive_bytes"),
                n("receive_rate"),
            );
            let (sf, sb, sr) = (n("to_send_files"), n("to_send_bytes"), n("send_rate"));
            if rf == 0 && sf == 0 {
                return "connected, in sync".into();
            }
            let mut parts = Vec::new();
            if rf > 0 {
                parts.push(format!(
                    "receiving {rf} file(s), {} to go at {}/s",
                    bytes(rb),
                    bytes(rr)
                ));
            }
            if sf > 0 {
                parts.push(format!(
                    "sending {sf} file(s), {} at {}/s",
                    bytes(sb),
                    bytes(sr)
                ));
            }
            format!("connected, {}", parts.join("; "))
        }
        "paused" => "paused (sync is paused on this node: 'sovryn resume')".into(),
        "peer_paused" => "paused by the peer ('sovryn resume' there)".into(),
        "wrong_folder_key" | "not_allowed_there" | "error" => {
            format!("error: {}", error.unwrap_or_default())
        }
        _ => match error {
            Some(e) => format!("offline ({e})"),
            None => "offline".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("plain/path.txt"), "plain/path.txt");
        assert_eq!(printable("a\x1b[31mred"), "a\\x1b[31mred");
        assert_eq!(printable("x\u{9b}y\u{7f}"), "x\\x9by\\x7f");
        assert_eq!(printable("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(printable("two\nlines"), "two\\nlines");
    }
}
