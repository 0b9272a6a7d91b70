//! An app's plain config and its secrets: environment variables its tenant
//! sets once for every live version (stable and canary), without a new
//! upload. Precedence, lowest first: a version's `--env`, the app's config,
//! its secrets.
//!
//! A change is a new revision of the app's desired state, in the
//! transaction that makes it ([`append_change`]), applied by gateways with
//! the same ACK/NACK as a version. A secret's value is sealed with the
//! master key before it is stored (AES-256-GCM; its AAD binds it to the app
//! and the name, so a sealed value moved to another row does not open), is
//! never returned by the API, never written to a log line or the audit log
//! (which names it only), and goes only to gateways.

use crate::desired_state::{DbResult, Scope, append_change};
use crate::error::ApiError;
use crate::store::{Store, WriteError, now_ms};
use gannet_model::api::AppSetting;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// An app's config and its opened secrets, by name.
pub type Settings = (BTreeMap<String, String>, BTreeMap<String, String>);

/// Settings of one kind an app may have.
pub const MAX_PER_KIND: i64 = 100;

/// Longest value, bytes.
pub const MAX_VALUE_BYTES: usize = 32 << 10;

/// Longest name, bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Which of an app's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Plain config: its value is returned by the API.
    Config,
    /// A secret: sealed at rest, its value never returned.
    Secret,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Config => "config",
            Kind::Secret => "secret",
        }
    }

    /// `config value` / `secret`, for messages.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Config => "config value",
            Kind::Secret => "secret",
        }
    }
}

/// The AAD a secret is sealed with: the app and the name.
fn secret_aad(app_id: i64, name: &str) -> Vec<u8> {
    format!("gannet app secret\0{app_id}\0{name}").into_bytes()
}

/// Checks a name (an environment variable name: a letter or `_`, then
/// letters, digits and `_`, at most [`MAX_NAME_BYTES`]) and a value (1 to
/// [`MAX_VALUE_BYTES`] bytes, no NUL). The error says what to fix and never
/// quotes the value.
pub fn check(kind: Kind, name: &str, value: Option<&str>) -> Result<(), ApiError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok
        || name.len() > MAX_NAME_BYTES
        || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(ApiError::Invalid(format!(
            "{} name `{}`: use an environment variable name (a letter or `_`, then letters, digits and `_`; at most {MAX_NAME_BYTES} bytes)",
            kind.noun(),
            name.escape_debug()
        )));
    }
    if let Some(value) = value {
        if value.is_empty() {
            return Err(ApiError::Invalid(format!(
                "{} `{name}` is empty: delete it instead",
                kind.noun()
            )));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::TooLarge(format!(
                "{} `{name}` is {} bytes; at most {MAX_VALUE_BYTES} are allowed",
                kind.noun(),
                value.len()
            )));
        }
        if value.contains('\0') {
            return Err(ApiError::Invalid(format!(
                "{} `{name}` contains a NUL byte, which an environment variable cannot hold",
                kind.noun()
            )));
        }
    }
    Ok(())
}

impl Store {
    /// Sets an app's config value or secret (sealing a secret first) and
    /// feeds the change, in one transaction; returns the record (a
    /// secret's without its value) and the revision. More than
    /// [`MAX_PER_KIND`] of a kind is [`WriteError::Quota`].
    pub async fn set_setting(
        &self,
        app_id: i64,
        kind: Kind,
        name: &str,
        value: &str,
    ) -> Result<(AppSetting, i64), WriteError> {
        let (plain, sealed) = match kind {
            Kind::Config => (Some(value.to_string()), None),
            Kind::Secret => {
                let key = self.master_key().ok_or(WriteError::NoMasterKey)?;
                (
                    None,
                    Some(key.seal(value.as_bytes(), &secret_aad(app_id, name))?),
                )
            }
        };
        let now = now_ms();
        let mut tx = self.pool().begin().await?;
        // The app's row lock orders this with the app's other writes.
        crate::rollouts::store::lock_app(&mut tx, app_id).await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, SUM(CASE WHEN name = $3 THEN 1 ELSE 0 END) AS same \
             FROM app_settings WHERE app_id = $1 AND kind = $2",
        )
        .bind(app_id)
        .bind(kind.as_str())
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
        let n: i64 = row.try_get("n")?;
        let same: Option<i64> = row.try_get("same")?;
        if same.unwrap_or(0) == 0 && n >= MAX_PER_KIND {
            return Err(WriteError::Quota(format!(
                "the app already has {MAX_PER_KIND} {}s; delete one first",
                kind.noun()
            )));
        }
        sqlx::query(
            "INSERT INTO app_settings (app_id, kind, name, value, value_sealed, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app_id, kind, name) DO UPDATE \
             SET value = excluded.value, value_sealed = excluded.value_sealed, updated_ms = excluded.updated_ms",
        )
        .bind(app_id)
        .bind(kind.as_str())
        .bind(name)
        .bind(plain.clone())
        .bind(sealed)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let revision = append_change(&mut tx, self.dialect(), app_id, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok((
            AppSetting {
                name: name.to_string(),
                value: plain,
                updated_ms: now,
            },
            revision,
        ))
    }

    /// Deletes an app's config value or secret and feeds the change; the
    /// revision, or `None` when it had none of that name.
    pub async fn delete_setting(
        &self,
        app_id: i64,
        kind: Kind,
        name: &str,
    ) -> DbResult<Option<i64>> {
        let mut tx = self.pool().begin().await?;
        let done =
            sqlx::query("DELETE FROM app_settings WHERE app_id = $1 AND kind = $2 AND name = $3")
                .bind(app_id)
                .bind(kind.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        let revision = append_change(&mut tx, self.dialect(), app_id, Scope::Everywhere).await?;
        tx.commit().await?;
        Ok(Some(revision))
    }

    /// An app's settings of one kind, by name: config with values,
    /// secrets without.
    pub async fn list_settings(&self, app_id: i64, kind: Kind) -> DbResult<Vec<AppSetting>> {
        let rows = sqlx::query(
            "SELECT name, value, updated_ms FROM app_settings WHERE app_id = $1 AND kind = $2 ORDER BY name",
        )
        .bind(app_id)
        .bind(kind.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AppSetting {
                    name: r.try_get("name")?,
                    value: match kind {
                        Kind::Config => r.try_get("value")?,
                        Kind::Secret => None,
                    },
                    updated_ms: r.try_get("updated_ms")?,
                })
            })
            .collect()
    }

    /// The config and the opened secrets of the apps with ids in `ids`
    /// (every app when `None`), for gateways. A secret the master key does
    /// not open is logged by name and left out.
    pub async fn settings_for(&self, ids: Option<&[i64]>) -> DbResult<HashMap<i64, Settings>> {
        let mut sql =
            "SELECT app_id, kind, name, value, value_sealed FROM app_settings".to_string();
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(HashMap::new());
            }
            let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            sql.push_str(&format!(" WHERE app_id IN ({})", list.join(", ")));
        }
        let mut q = sqlx::query(&sql);
        for id in ids.unwrap_or_default() {
            q = q.bind(*id);
        }
        let mut out: HashMap<i64, Settings> = HashMap::new();
        for r in q.fetch_all(self.pool()).await? {
            let app_id: i64 = r.try_get("app_id")?;
            let kind: String = r.try_get("kind")?;
            let name: String = r.try_get("name")?;
            let entry = out.entry(app_id).or_default();
            if kind == "config" {
                if let Some(v) = r.try_get::<Option<String>, _>("value")? {
                    entry.0.insert(name, v);
                }
                continue;
            }
            let sealed: Option<Vec<u8>> = r.try_get("value_sealed")?;
            let opened = match (self.master_key(), sealed) {
                (Some(key), Some(sealed)) => key
                    .open(&sealed, &secret_aad(app_id, &name))
                    .ok()
                    .and_then(|v| String::from_utf8(v).ok()),
                _ => None,
            };
            match opened {
                Some(v) => {
                    entry.1.insert(name, v);
                }
                None => tracing::error!(
                    app_id,
                    secret = %name,
                    "an app's secret does not open with the master key; left out of its state: start the control API with the master key it was set with, or set the secret again"
                ),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_values_are_checked_without_quoting_the_value() {
        for good in ["STRIPE_KEY", "_x", "a1", &"A".repeat(MAX_NAME_BYTES)] {
            assert!(check(Kind::Secret, good, Some("v")).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1X",
            "A-B",
            "A B",
            "Ä",
            "A=B",
            &"A".repeat(MAX_NAME_BYTES + 1),
        ] {
            assert!(
                matches!(check(Kind::Secret, bad, None), Err(ApiError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            check(Kind::Secret, "K", Some("")),
            Err(ApiError::Invalid(_))
        ));
        let big = "s3cr3t".repeat(MAX_VALUE_BYTES);
        match check(Kind::Secret, "K", Some(&big)) {
            Err(ApiError::TooLarge(m)) => assert!(!m.contains("s3cr3t"), "{m}"),
            other => panic!("{other:?}"),
        }
        match check(Kind::Config, "K", Some("a\0b")) {
            Err(ApiError::Invalid(m)) => assert!(m.contains("NUL")),
            other => panic!("{other:?}"),
        }
        assert_ne!(secret_aad(1, "A"), secret_aad(2, "A"));
        assert_ne!(secret_aad(1, "A"), secret_aad(1, "B"));
    }
}
