//! One module per resource; each exposes `router() -> Router<AppState>`.

pub mod account;
pub mod admin;
pub mod apps;
pub mod pops;
pub mod rollouts;
pub mod settings;
pub mod versions;

use crate::error::ApiError;
use gannet_model::AppId;

/// Checks a tenant or app name (DNS-label rules).
pub fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    name.parse::<AppId>()
        .map(|_| ())
        .map_err(|_| ApiError::Invalid(format!("`{name}` is not a valid {kind} name: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'")))
}
