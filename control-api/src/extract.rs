//! `Json` and `Path` wrappers whose rejections are problem documents too.

use crate::error::ApiError;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// `axum::Json`, rejecting with `invalid-request`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| Json(v))
            .map_err(|e| ApiError::Invalid(without_quoted_input(&e.body_text())))
    }
}

/// serde's message with any quoted input value cut out: a rejected body
/// may carry secrets (a private key sent as the wrong type), and the
/// answer must not echo them. `invalid type: string "-----BEGIN…", expected
/// struct` becomes `invalid type: string "…", expected struct`.
fn without_quoted_input(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(256));
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if quoted {
                out.push_str("…\"");
            } else {
                out.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    if quoted {
        out.push('…');
    }
    out
}

/// `axum::extract::Path`, rejecting with `invalid-request`.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|e| ApiError::Invalid(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_input_is_not_echoed() {
        let m = "Failed to deserialize the JSON body into the target type: certificate: invalid type: string \"-----BEGIN PRIVATE KEY-----\\nMIIE\", expected struct CertificateUpload at line 1 column 90";
        let cut = super::without_quoted_input(m);
        assert!(
            !cut.contains("PRIVATE KEY") && !cut.contains("MIIE"),
            "{cut}"
        );
        assert!(
            cut.contains("invalid type: string \"…\", expected struct"),
            "{cut}"
        );
        assert_eq!(
            super::without_quoted_input("missing field `name`"),
            "missing field `name`"
        );
    }
}
