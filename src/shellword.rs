//! Words that reach a command line on the slave host: the georep path, the volume, the key
//! comment. Each is checked against a small safe set and quoted anyway, so neither a remote
//! shell (OpenSSH runs commands through the user's shell) nor an option parser can read one as
//! anything but a single plain argument.
//!
//! Invariant: every remote command georep builds goes through [`command`]; every command it
//! runs on the slave side (`georep serve`) is read back with [`split`].

use anyhow::{bail, Result};

/// Characters a remote word may hold: no quotes, no spaces, nothing a shell expands
/// (`$`, backquote, `;`, `|`, `&`, `<`, `>`, `(`, `*`, `?`, `~`, …), and no comma, which ends
/// an option in authorized_keys.
fn safe_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-' | '+' | '@' | '%' | ':' | '=')
}

/// Refuses `v` unless it is non-empty, made of safe characters and does not start with `-`
/// (which a program would read as an option).
pub fn check(what: &str, v: &str) -> Result<()> {
    if v.is_empty() {
        bail!("{what} is empty");
    }
    if v.starts_with('-') {
        bail!("{what} {v:?} starts with '-': it would be read as an option on the slave host");
    }
    if let Some(c) = v.chars().find(|&c| !safe_char(c)) {
        bail!(
            "{what} {v:?} holds {c:?}: only letters, digits and _ . / - + @ % : = may reach a command on the slave host (rename it)"
        );
    }
    Ok(())
}

/// A slave volume as named on the slave host: an absolute path other than `/` with no `.` or
/// `..` component, or a volume name (no `/`, not `.` or `..`).
pub fn check_volume(v: &str) -> Result<()> {
    check("slave volume", v)?;
    if let Some(rest) = v.strip_prefix('/') {
        if rest.trim_matches('/').is_empty() {
            bail!("slave volume {v:?}: the root of the slave host cannot be a DR volume");
        }
        if rest.split('/').any(|c| c == "." || c == "..") {
            bail!("slave volume {v:?} has a '.' or '..' component: give the path plainly");
        }
    } else if v.contains('/') || v == "." || v == ".." {
        bail!("slave volume {v:?}: give a volume name, or an absolute path starting with '/'");
    }
    Ok(())
}

/// `'v'`: quoted for a POSIX shell. `v` has passed [`check`] (or is a key, see
/// [`quote_any`]), so it holds no single quote.
fn quote(v: &str) -> String {
    format!("'{v}'")
}

/// Quotes a word made by georep itself (a public key with its space): refuses a single quote.
pub fn quote_any(what: &str, v: &str) -> Result<String> {
    if v.contains(|c: char| c == '\'' || c == '"' || c == '\\' || c.is_control()) {
        bail!("{what} {v:?} cannot be quoted for the slave host");
    }
    Ok(quote(v))
}

/// A command line of checked, quoted words: `program` then `args`. `fixed` words (georep's own
/// subcommands and flags) are left bare; the rest are checked.
pub fn command(program: &str, args: &[Word<'_>]) -> Result<String> {
    check("remote-georep", program)?;
    let mut out = quote(program);
    for a in args {
        out.push(' ');
        match a {
            Word::Fixed(w) => out.push_str(w),
            Word::Arg(what, v) => {
                check(what, v)?;
                out.push_str(&quote(v));
            }
            Word::Quoted(q) => out.push_str(q),
        }
    }
    Ok(out)
}

/// One word of [`command`].
pub enum Word<'a> {
    /// georep's own word (`agent`, `--volume`): written as is.
    Fixed(&'a str),
    /// A value from the operator: checked, then quoted. The first field names it in errors.
    Arg(&'a str, &'a str),
    /// Already quoted with [`quote_any`].
    Quoted(&'a str),
}

/// Splits a command line made by [`command`] (or an older bare one) into words: plain words
/// and single-quoted words, separated by spaces. `None` for anything else, so a line a shell
/// would read differently is never run.
pub fn split(cmd: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = cmd.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c if safe_char(c) => cur.push(c),
                        _ => return None,
                    }
                }
            }
            c if safe_char(c) => {
                in_word = true;
                cur.push(c);
            }
            _ => return None,
        }
    }
    if in_word {
        words.push(cur);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_words_are_refused() {
        for bad in [
            "/dr/x;id",
            "$(id)",
            "`id`",
            "-oProxyCommand=id",
            "a b",
            "a'b",
            "a\"b",
            "a\\b",
            "a,b",
            "a|b",
            "a&b",
            "a>b",
            "~root",
            "*",
            "a\nb",
            "",
        ] {
            assert!(check("w", bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/usr/bin/georep", "gv1", "/dr/data-1.2", "georep:gv0@n1"] {
            check("w", good).unwrap();
        }
    }

    #[test]
    fn volumes_are_paths_or_names() {
        for bad in [
            "/",
            "//",
            "../../etc",
            "/dr/../etc",
            "/dr/./x",
            "a/b",
            "..",
            "-x",
        ] {
            assert!(check_volume(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["/dr/x", "gv1", "/dr/x/"] {
            check_volume(good).unwrap();
        }
    }

    #[test]
    fn commands_round_trip_through_split() {
        let c = command(
            "/usr/bin/georep",
            &[
                Word::Fixed("agent"),
                Word::Fixed("--volume"),
                Word::Arg("volume", "/dr/x"),
            ],
        )
        .unwrap();
        assert_eq!(c, "'/usr/bin/georep' agent --volume '/dr/x'");
        assert_eq!(
            split(&c).unwrap(),
            ["/usr/bin/georep", "agent", "--volume", "/dr/x"]
        );
        assert_eq!(
            split("georep agent --volume gv1").unwrap(),
            ["georep", "agent", "--volume", "gv1"]
        );
        assert!(command("georep;id", &[]).is_err());
        assert!(command("georep", &[Word::Arg("volume", "x;id")]).is_err());
        for bad in [
            "georep agent --volume x;id",
            "georep agent --volume '$(id)'",
            "georep agent --volume 'x",
            "georep agent --volume \"x\"",
            "georep agent --volume x\\ y",
        ] {
            assert!(split(bad).is_none(), "{bad:?} split");
        }
    }
}
