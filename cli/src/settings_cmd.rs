//! An app's secrets and plain config in the CLI: `gannet secrets …` and
//! `gannet config …`, and the pure parsing and formatting behind them
//! (tested below). A secret's value is never taken from the command line
//! and never printed, not in errors either.

// Table headers are padded with the same widths as their rows.
#![allow(clippy::write_literal)]

use crate::args::{ConfigCommand, SecretsCommand};
use crate::client::Client;
use crate::commands::{civil_date, print_json};
use anyhow::{Context, Result, bail};
use gannet_model::api::{AppSetting, SetSetting};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read};

/// What `set` says after the API took a change.
const APPLIES: &str = "gateways get it within the sync time; no redeploy needed";

/// Runs `gannet secrets …`.
pub async fn secrets(client: &Client, cmd: SecretsCommand, json: bool) -> Result<()> {
    match cmd {
        SecretsCommand::Set { name, app } => {
            check_name(&name)?;
            let value = secret_value(&name, &app)?;
            let set: AppSetting = client
                .put(
                    &format!("/v1/apps/{app}/secrets/{name}"),
                    &SetSetting { value },
                )
                .await
                .with_context(|| format!("setting secret {name} for {app}"))?;
            if json {
                return print_json(&set);
            }
            println!("secret {name} set for {app} ({APPLIES})");
        }
        SecretsCommand::List { app } => {
            let list: Vec<AppSetting> = client.get(&format!("/v1/apps/{app}/secrets")).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("{app} has no secrets");
                return Ok(());
            }
            print!("{}", secrets_table(&list));
        }
        SecretsCommand::Delete { name, app } => {
            check_name(&name)?;
            client
                .delete(&format!("/v1/apps/{app}/secrets/{name}"))
                .await?;
            if json {
                return print_json(&serde_json::json!({ "app": app, "deleted": name }));
            }
            println!("secret {name} deleted from {app} (gateways drop it within the sync time)");
        }
    }
    Ok(())
}

/// Runs `gannet config …`.
pub async fn config(client: &Client, cmd: ConfigCommand, json: bool) -> Result<()> {
    match cmd {
        ConfigCommand::Set { app, pairs } => {
            // Every pair is checked before the first request.
            let pairs = parse_pairs(&pairs)?;
            let total = pairs.len();
            let mut set = Vec::with_capacity(total);
            for (done, (key, value)) in pairs.into_iter().enumerate() {
                let s: AppSetting = client
                    .put(
                        &format!("/v1/apps/{app}/config/{key}"),
                        &SetSetting { value },
                    )
                    .await
                    .with_context(|| {
                        format!("setting config {key} for {app} ({done} of {total} set before it)")
                    })?;
                if !json {
                    println!("config {key} set for {app}");
                }
                set.push(s);
            }
            if json {
                return print_json(&set);
            }
            println!("({APPLIES})");
        }
        ConfigCommand::List { app } => {
            let list: Vec<AppSetting> = client.get(&format!("/v1/apps/{app}/config")).await?;
            if json {
                return print_json(&list);
            }
            if list.is_empty() {
                eprintln!("{app} has no config values");
                return Ok(());
            }
            print!("{}", config_table(&list));
        }
        ConfigCommand::Delete { key, app } => {
            check_name(&key)?;
            client
                .delete(&format!("/v1/apps/{app}/config/{key}"))
                .await?;
            if json {
                return print_json(&serde_json::json!({ "app": app, "deleted": key }));
            }
            println!("config {key} deleted from {app} (gateways drop it within the sync time)");
        }
    }
    Ok(())
}

/// The secret's value: all of stdin when it is not a terminal (one
/// trailing newline dropped), else typed at a prompt without echo. Refused
/// when empty. Errors never hold the value.
fn secret_value(name: &str, app: &str) -> Result<String> {
    let stdin = std::io::stdin();
    let value = if stdin.is_terminal() {
        rpassword::prompt_password(format!("value for {name} (hidden): "))
            .context("reading the secret's value from the terminal")?
    } else {
        let mut bytes = Vec::new();
        stdin
            .lock()
            .read_to_end(&mut bytes)
            .context("reading the secret's value from stdin")?;
        stdin_value(bytes)?
    };
    if value.is_empty() {
        bail!(
            "the value of secret {name} is empty: type it at the prompt, or pipe it in, e.g. \
             `printf %s \"$VALUE\" | gannet secrets set {name} --app {app}` \
             (a value is never taken from the command line)"
        );
    }
    Ok(value)
}

/// A value read from stdin: UTF-8, without its one trailing newline
/// (`\n` or `\r\n`), as `echo` and files end. The error never quotes it.
fn stdin_value(bytes: Vec<u8>) -> Result<String> {
    let Ok(mut value) = String::from_utf8(bytes) else {
        bail!("the value on stdin is not UTF-8 text");
    };
    if value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    Ok(value)
}

/// `KEY=VALUE` arguments as pairs, in order: split at the first `=` (the
/// value may be empty or hold more). A pair without `=` or with an empty
/// key refuses them all. Errors name the argument by position, not by text.
fn parse_pairs(args: &[String]) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::with_capacity(args.len());
    for (i, arg) in args.iter().enumerate() {
        let n = i + 1;
        let Some((key, value)) = arg.split_once('=') else {
            bail!("argument {n} has no `=`: each value must be KEY=VALUE; nothing was set");
        };
        if key.is_empty() {
            bail!("argument {n} has an empty key: each value must be KEY=VALUE; nothing was set");
        }
        if !valid_name(key) {
            bail!("`{key}` (argument {n}) is not a valid name: {NAME_RULE}; nothing was set");
        }
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

/// What a name may be, as errors say it.
const NAME_RULE: &str = "use letters, digits and `_`, e.g. DATABASE_URL";

/// Whether `name` can be one path segment of the API's URL as it is. The
/// control API has the exact rules (`[A-Za-z_][A-Za-z0-9_]*`); this only
/// keeps a name from changing which URL is asked.
fn valid_name(name: &str) -> bool {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '~');
    !name.is_empty() && name != "." && name != ".." && name.chars().all(plain)
}

/// Refuses a name [`valid_name`] refuses, before any request.
fn check_name(name: &str) -> Result<()> {
    if !valid_name(name) {
        bail!("`{name}` is not a valid name: {NAME_RULE}");
    }
    Ok(())
}

/// When a setting was last set: `YYYY-MM-DD HH:MM:SS`, UTC.
fn stamp(ms: i64) -> String {
    let secs = ms.div_euclid(1_000);
    let of_day = secs.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02}",
        civil_date(secs),
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// A config value as one table cell: as it is, or quoted with escapes when
/// it holds a line break or another control character.
fn cell(value: &str) -> String {
    if value.chars().any(char::is_control) {
        format!("{value:?}")
    } else {
        value.to_string()
    }
}

/// `gannet secrets list`: NAME, UPDATED.
fn secrets_table(list: &[AppSetting]) -> String {
    let width = list
        .iter()
        .map(|s| s.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$} {}", "NAME", "UPDATED (UTC)");
    for s in list {
        let _ = writeln!(out, "{:<width$} {}", s.name, stamp(s.updated_ms));
    }
    out
}

/// `gannet config list`: NAME, VALUE, UPDATED.
fn config_table(list: &[AppSetting]) -> String {
    let rows: Vec<(&str, String, String)> = list
        .iter()
        .map(|s| {
            (
                s.name.as_str(),
                cell(s.value.as_deref().unwrap_or_default()),
                stamp(s.updated_ms),
            )
        })
        .collect();
    let name_width = rows
        .iter()
        .map(|r| r.0.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let value_width = rows
        .iter()
        .map(|r| r.1.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<name_width$} {:<value_width$} {}",
        "NAME", "VALUE", "UPDATED (UTC)"
    );
    for (name, value, updated) in &rows {
        let _ = writeln!(out, "{name:<name_width$} {value:<value_width$} {updated}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| (*a).to_string()).collect()
    }

    #[test]
    fn pairs() {
        let parsed = parse_pairs(&strings(&["A=1", "B=", "C=x=y", "D_2= spaced "])).unwrap();
        assert_eq!(
            parsed,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), String::new()),
                ("C".to_string(), "x=y".to_string()),
                ("D_2".to_string(), " spaced ".to_string()),
            ]
        );

        let error = parse_pairs(&strings(&["A=1", "hunter2"]))
            .unwrap_err()
            .to_string();
        assert!(error.contains("argument 2 has no `=`"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");

        let error = parse_pairs(&strings(&["=1"])).unwrap_err().to_string();
        assert!(error.contains("argument 1 has an empty key"), "{error}");

        let error = parse_pairs(&strings(&["A=1", "a/b=2"]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`a/b` (argument 2) is not a valid name"),
            "{error}"
        );
        assert!(parse_pairs(&[]).unwrap().is_empty());
    }

    #[test]
    fn names() {
        for good in ["DATABASE_URL", "a", "_x1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a?b", "a#b", "a%2F", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let error = check_name("../x").unwrap_err().to_string();
        assert!(error.starts_with("`../x` is not a valid name"), "{error}");
    }

    #[test]
    fn stdin_values() {
        let value = |s: &str| stdin_value(s.as_bytes().to_vec()).unwrap();
        assert_eq!(value("s3cret\n"), "s3cret");
        assert_eq!(value("s3cret\r\n"), "s3cret");
        assert_eq!(value("s3cret"), "s3cret");
        assert_eq!(value("s3cret\n\n"), "s3cret\n");
        assert_eq!(value("s3cret\r"), "s3cret\r");
        assert_eq!(value("line1\nline2\n"), "line1\nline2");
        assert_eq!(value(" padded \n"), " padded ");
        assert_eq!(value("\n"), "");
        assert_eq!(value(""), "");
        let error = stdin_value(vec![b'a', 0xff, b'\n'])
            .unwrap_err()
            .to_string();
        assert_eq!(error, "the value on stdin is not UTF-8 text");
    }

    #[test]
    fn tables() {
        assert_eq!(stamp(0), "1970-01-01 00:00:00");
        assert_eq!(stamp(951_782_400_000 + 3_723_999), "2000-02-29 01:02:03");

        let secrets = secrets_table(&[
            AppSetting {
                name: "DATABASE_URL".into(),
                value: None,
                updated_ms: 3_723_000,
            },
            AppSetting {
                name: "K".into(),
                value: None,
                updated_ms: 0,
            },
        ]);
        assert_eq!(
            secrets,
            "NAME         UPDATED (UTC)\n\
             DATABASE_URL 1970-01-01 01:02:03\n\
             K            1970-01-01 00:00:00\n"
        );

        let config = config_table(&[
            AppSetting {
                name: "MODE".into(),
                value: Some("fast".into()),
                updated_ms: 0,
            },
            AppSetting {
                name: "GREETING".into(),
                value: Some("hi\nthere".into()),
                updated_ms: 0,
            },
        ]);
        assert_eq!(
            config,
            "NAME     VALUE       UPDATED (UTC)\n\
             MODE     fast        1970-01-01 00:00:00\n\
             GREETING \"hi\\nthere\" 1970-01-01 00:00:00\n"
        );
    }
}
