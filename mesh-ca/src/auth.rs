//! Who is calling: the workload's ServiceAccount, from its token.
//!
//! [`KubeTokenReview`] asks the API server (TokenReview, audience `mesh-ca`);
//! [`StaticTokens`] reads a local "bootstrap token file" for local mode.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::Api;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::TOKEN_REVIEW_TIMEOUT;

/// The ServiceAccount a token belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub service_account: String,
}

/// Why a token was not accepted.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer <token>` metadata.
    #[error("missing bearer token (send `authorization: Bearer <ServiceAccount token>`)")]
    Missing,
    /// Forged, expired, revoked or unknown token.
    #[error("token rejected: {0}")]
    Rejected(String),
    /// Valid token, but not issued for the CA's audience.
    #[error("token is not for audience {0:?}")]
    WrongAudience(String),
    /// Valid token of a user that is not a ServiceAccount.
    #[error("token does not belong to a ServiceAccount (user {0:?})")]
    NotServiceAccount(String),
    /// The authenticator could not decide (API server down): retry later.
    #[error("token review unavailable: {0}")]
    Unavailable(String),
}

/// A boxed authentication future (object-safe trait without async-trait).
pub type AuthFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ServiceAccountRef, AuthError>> + Send + 'a>>;

/// Checks a bearer token and says which ServiceAccount it belongs to.
pub trait TokenAuthenticator: Send + Sync + 'static {
    /// Authenticates `token` (without the `Bearer ` prefix).
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a>;
}

/// Kubernetes TokenReview (`authentication.k8s.io/v1`) with audience `mesh-ca`.
#[derive(Clone)]
pub struct KubeTokenReview {
    client: kube::Client,
    audience: String,
}

impl KubeTokenReview {
    /// Reviews tokens for `audience` (normally [`mesh_api::CA_TOKEN_AUDIENCE`]).
    pub fn new(client: kube::Client, audience: &str) -> Self {
        Self {
            client,
            audience: audience.to_string(),
        }
    }
}

impl TokenAuthenticator for KubeTokenReview {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![self.audience.clone()]),
                },
                ..Default::default()
            };
            let api: Api<TokenReview> = Api::all(self.client.clone());
            let pp = PostParams::default();
            let call = api.create(&pp, &review);
            let answer = tokio::time::timeout(TOKEN_REVIEW_TIMEOUT, call)
                .await
                .map_err(|_| AuthError::Unavailable("TokenReview timed out".into()))?
                .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
            let status = answer.status.unwrap_or_default();
            service_account_from_review(&status, &self.audience)
        })
    }
}

/// Maps a TokenReview status to the token's ServiceAccount: requires
/// `authenticated`, `audience` among the audiences, and a username
/// `system:serviceaccount:<ns>:<sa>`.
pub fn service_account_from_review(
    status: &TokenReviewStatus,
    audience: &str,
) -> Result<ServiceAccountRef, AuthError> {
    if status.authenticated != Some(true) {
        let why = status
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "not authenticated".into());
        return Err(AuthError::Rejected(why));
    }
    // An API server that does not echo audiences only answers for its own
    // audience, which is not ours: treat missing as wrong.
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience(audience.to_string()));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    parse_service_account_username(&username).ok_or(AuthError::NotServiceAccount(username))
}

/// `system:serviceaccount:<ns>:<sa>` → its parts.
pub fn parse_service_account_username(username: &str) -> Option<ServiceAccountRef> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (ns, sa) = rest.split_once(':')?;
    if ns.is_empty() || sa.is_empty() || sa.contains(':') {
        return None;
    }
    Some(ServiceAccountRef {
        namespace: ns.to_string(),
        service_account: sa.to_string(),
    })
}

/// Local mode: a fixed set of tokens from the bootstrap token file.
///
/// The file (YAML or JSON) maps each token to its ServiceAccount:
///
/// ```yaml
/// "dev-token-web": {namespace: default, serviceAccount: web}
/// "dev-token-db":  {namespace: data, serviceAccount: postgres}
/// ```
///
/// Tokens are compared in constant time (SHA-256 digests, every entry checked).
pub struct StaticTokens {
    entries: Vec<([u8; 32], ServiceAccountRef)>,
}

/// The bootstrap token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// Unreadable.
    #[error("{0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// Not a map of token → {namespace, serviceAccount}.
    #[error("{0}: {1}")]
    Parse(String, String),
}

impl StaticTokens {
    /// Builds from (token, ServiceAccount) pairs.
    pub fn new(tokens: impl IntoIterator<Item = (String, ServiceAccountRef)>) -> Self {
        Self {
            entries: tokens
                .into_iter()
                .map(|(t, sa)| (digest(t.trim()), sa))
                .collect(),
        }
    }

    /// Reads the bootstrap token file.
    pub fn from_file(path: &Path) -> Result<Self, TokenFileError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| TokenFileError::Io(name.clone(), e))?;
        Self::from_yaml(&text).map_err(|e| TokenFileError::Parse(name, e))
    }

    /// Parses the bootstrap token file's content (YAML or JSON).
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let map: BTreeMap<String, ServiceAccountRef> =
            serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        for (t, sa) in &map {
            if t.trim().len() < 8 {
                return Err(format!(
                    "token for {}/{} is shorter than 8 characters",
                    sa.namespace, sa.service_account
                ));
            }
        }
        Ok(Self::new(map))
    }
}

fn digest(token: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl TokenAuthenticator for StaticTokens {
    fn authenticate<'a>(&'a self, token: &'a str) -> AuthFuture<'a> {
        let d = digest(token.trim());
        // Look at every entry so timing does not tell which one matched.
        let mut found: Option<&ServiceAccountRef> = None;
        for (k, sa) in &self.entries {
            if bool::from(k.ct_eq(&d)) {
                found = Some(sa);
            }
        }
        let r = found
            .cloned()
            .ok_or_else(|| AuthError::Rejected("unknown token".into()));
        Box::pin(async move { r })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;

    fn status(auth: bool, auds: &[&str], user: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(auth),
            audiences: Some(auds.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                ..Default::default()
            }),
            error: (!auth).then(|| "token has expired".to_string()),
        }
    }

    #[test]
    fn token_review_status_mapping() {
        let ok = status(true, &["mesh-ca"], "system:serviceaccount:shop:web");
        assert_eq!(
            service_account_from_review(&ok, "mesh-ca"),
            Ok(ServiceAccountRef {
                namespace: "shop".into(),
                service_account: "web".into()
            })
        );
        // Not authenticated (expired, forged, wrong audience on most servers).
        let st = status(false, &[], "");
        assert_eq!(
            service_account_from_review(&st, "mesh-ca"),
            Err(AuthError::Rejected("token has expired".into()))
        );
        let st = TokenReviewStatus::default();
        assert!(matches!(
            service_account_from_review(&st, "mesh-ca"),
            Err(AuthError::Rejected(_))
        ));
        // Authenticated for another audience, or no audience echoed.
        let st = status(true, &["kubernetes"], "system:serviceaccount:shop:web");
        assert_eq!(
            service_account_from_review(&st, "mesh-ca"),
            Err(AuthError::WrongAudience("mesh-ca".into()))
        );
        let mut st = status(true, &[], "system:serviceaccount:shop:web");
        st.audiences = None;
        assert!(matches!(
            service_account_from_review(&st, "mesh-ca"),
            Err(AuthError::WrongAudience(_))
        ));
        // Users that are not ServiceAccounts.
        for user in [
            "admin",
            "system:node:n1",
            "system:serviceaccount:shop",
            "system:serviceaccount::web",
            "system:serviceaccount:shop:",
            "system:serviceaccount:shop:web:extra",
            "",
        ] {
            let st = status(true, &["mesh-ca"], user);
            assert!(
                matches!(
                    service_account_from_review(&st, "mesh-ca"),
                    Err(AuthError::NotServiceAccount(_))
                ),
                "{user}"
            );
        }
    }

    #[tokio::test]
    async fn static_tokens_match_exactly() {
        let t = StaticTokens::from_yaml(
            "\"token-for-web-1\": {namespace: shop, serviceAccount: web}\n\
             \"token-for-db-22\": {namespace: data, serviceAccount: pg}\n",
        )
        .unwrap();
        assert_eq!(
            t.authenticate("token-for-db-22")
                .await
                .unwrap()
                .service_account,
            "pg"
        );
        assert_eq!(
            t.authenticate("token-for-web-1\n").await.unwrap().namespace,
            "shop"
        );
        for bad in ["", "token-for-web", "token-for-web-12", "TOKEN-FOR-WEB-1"] {
            assert!(matches!(
                t.authenticate(bad).await,
                Err(AuthError::Rejected(_))
            ));
        }
        // JSON works too; short tokens and unknown fields are refused.
        assert!(StaticTokens::from_yaml(
            r#"{"0123456789": {"namespace": "a", "serviceAccount": "b"}}"#
        )
        .is_ok());
        assert!(StaticTokens::from_yaml("\"short\": {namespace: a, serviceAccount: b}").is_err());
        assert!(StaticTokens::from_yaml(
            "\"0123456789\": {namespace: a, serviceAccount: b, admin: true}"
        )
        .is_err());
        assert!(StaticTokens::from_yaml("[1, 2]").is_err());
    }
}
