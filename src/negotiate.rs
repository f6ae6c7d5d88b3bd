//! The `negotiate` function: a subscriber asks for a client access URL and gets
//! `{"url", "baseUrl", "token"}`, the shape the SDKs' `getClientAccessToken` returns, for
//! its own user id, with the roles, initial groups and lifetime the settings give.
//!
//! The caller's identity comes from App Service authentication, which puts the signed-in
//! principal in `X-MS-CLIENT-PRINCIPAL-ID`, `X-MS-CLIENT-PRINCIPAL-NAME` and the base64 JSON
//! `X-MS-CLIENT-PRINCIPAL`. A `userId` query parameter is only honoured when a setting allows
//! it, for local development.

use base64::Engine;
use serde_json::json;
use serde_json::value::RawValue;

use crate::invocation::{HttpRequestData, HttpResponseData, InvocationResponse};
use crate::settings::NegotiateSettings;
use crate::webpubsub::WebPubSub;

/// The binding names `negotiate/function.json` uses.
pub const REQUEST_BINDING: &str = "req";
pub const RESPONSE_BINDING: &str = "res";

/// Claim types that carry a user id in an App Service principal, most specific first.
const USER_ID_CLAIMS: &[&str] = &[
    "http://schemas.microsoft.com/identity/claims/objectidentifier",
    "oid",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/nameidentifier",
    "sub",
];

/// Answers one `negotiate` invocation. Every outcome, refusals included, is an HTTP
/// response for the caller, so the invocation itself always succeeds.
pub async fn negotiate(
    request: &HttpRequestData,
    settings: &NegotiateSettings,
    client: &WebPubSub,
) -> InvocationResponse {
    let cors = cors_origin(request, &settings.cors_origins);
    let respond = |status: u16, body: serde_json::Value, log: String| {
        let mut response = HttpResponseData::json(status, &body);
        if let Some(origin) = &cors {
            response = response
                .header("Access-Control-Allow-Origin", origin.clone())
                .header("Vary", "Origin");
        }
        response.into_invocation(RESPONSE_BINDING, log)
    };

    if request.method.eq_ignore_ascii_case("options") {
        let mut response = HttpResponseData::json(204, &json!({}))
            .header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
            .header(
                "Access-Control-Allow-Headers",
                request
                    .header("Access-Control-Request-Headers")
                    .unwrap_or("Authorization, Content-Type"),
            )
            .header("Access-Control-Max-Age", "600");
        response.body = String::new();
        if let Some(origin) = &cors {
            response = response
                .header("Access-Control-Allow-Origin", origin.clone())
                .header("Vary", "Origin");
        }
        return response.into_invocation(RESPONSE_BINDING, "negotiate: preflight answered".into());
    }

    let user = match caller(request, settings.allow_query_user_id) {
        Ok(user) => user,
        Err(reason) => {
            return respond(
                401,
                json!({ "error": reason }),
                format!("negotiate: refused: {reason}"),
            );
        }
    };
    let Some(hub) = settings.hub.as_deref() else {
        let reason = "no hub configured for negotiate: set WebPubSubHub or RowcastNegotiateHub";
        return respond(
            500,
            json!({ "error": reason }),
            format!("negotiate: {reason}"),
        );
    };

    let groups = match user_groups(settings, &user) {
        Ok(groups) => groups,
        Err(reason) => {
            return respond(
                500,
                json!({ "error": reason }),
                format!("negotiate: {reason}"),
            )
        }
    };
    match client
        .client_access(
            hub,
            Some(&user),
            &settings.roles,
            &groups,
            settings.lifetime,
        )
        .await
    {
        Ok(access) => {
            let body = serde_json::to_value(&access).unwrap_or_default();
            respond(
                200,
                body,
                format!("negotiate: client access url issued for user {user} on hub {hub}"),
            )
        }
        Err(err) => {
            let reason = format!("cannot issue a client access token: {err}");
            respond(
                502,
                json!({ "error": reason }),
                format!("negotiate: {reason}"),
            )
        }
    }
}

/// The caller's user id, or why there is none.
fn caller(request: &HttpRequestData, allow_query: bool) -> Result<String, String> {
    if let Some(id) = request.header("X-MS-CLIENT-PRINCIPAL-ID") {
        return Ok(id.to_owned());
    }
    if let Some(name) = request.header("X-MS-CLIENT-PRINCIPAL-NAME") {
        return Ok(name.to_owned());
    }
    if let Some(encoded) = request.header("X-MS-CLIENT-PRINCIPAL") {
        return principal_user(encoded).ok_or_else(|| {
            "X-MS-CLIENT-PRINCIPAL is not a base64 JSON principal with a user id".to_owned()
        });
    }
    match request.query("userId") {
        Some(user) if allow_query => Ok(user.to_owned()),
        Some(_) => Err("a userId query parameter is not accepted (RowcastNegotiateAllowQueryUserId is off); sign in with App Service authentication".into()),
        None => Err("no caller identity: expected App Service authentication (X-MS-CLIENT-PRINCIPAL-ID)".into()),
    }
}

/// Reads a user id from the base64 principal, in App Service's form (`claims` of
/// `typ`/`val`) or Static Web Apps' form (`userId`).
fn principal_user(encoded: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded.trim()))
        .ok()?;
    let principal: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if let Some(user) = principal
        .get("userId")
        .and_then(|u| u.as_str())
        .filter(|u| !u.is_empty())
    {
        return Some(user.to_owned());
    }
    let claims = principal.get("claims")?.as_array()?;
    let claim = |kind: &str| {
        claims.iter().find_map(|c| {
            let typ = c.get("typ").and_then(|t| t.as_str())?;
            let val = c.get("val").and_then(|v| v.as_str())?;
            (typ == kind && !val.is_empty()).then(|| val.to_owned())
        })
    };
    USER_ID_CLAIMS
        .iter()
        .find_map(|kind| claim(kind))
        .or_else(|| {
            let name_type = principal.get("name_typ").and_then(|t| t.as_str())?;
            claim(name_type)
        })
}

fn user_groups(settings: &NegotiateSettings, user: &str) -> Result<Vec<String>, String> {
    let row =
        RawValue::from_string(json!({ "userId": user }).to_string()).map_err(|e| e.to_string())?;
    settings
        .groups
        .iter()
        .map(|template| {
            template
                .render(&row)
                .map_err(|err| format!("RowcastNegotiateGroups: {err}"))
        })
        .collect()
}

/// The `Access-Control-Allow-Origin` value for this request, when its origin is allowed.
fn cors_origin(request: &HttpRequestData, allowed: &[String]) -> Option<String> {
    let origin = request.header("Origin")?;
    if allowed.iter().any(|a| a == "*") {
        return Some("*".into());
    }
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(origin))
        .then(|| origin.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: serde_json::Value, query: serde_json::Value) -> HttpRequestData {
        let value = json!({ "Method": "GET", "Url": "http://localhost/api/negotiate", "Headers": headers, "Query": query });
        HttpRequestData::from_binding(&RawValue::from_string(value.to_string()).unwrap(), "req")
            .unwrap()
    }

    #[test]
    fn principal_headers_win_over_the_query() {
        let r = request(
            json!({"X-MS-CLIENT-PRINCIPAL-ID": ["oid-1"]}),
            json!({"userId": "mallory"}),
        );
        assert_eq!(caller(&r, true).unwrap(), "oid-1");
        let r = request(
            json!({"x-ms-client-principal-name": "ann@contoso.com"}),
            json!({}),
        );
        assert_eq!(caller(&r, false).unwrap(), "ann@contoso.com");
    }

    #[test]
    fn the_query_needs_the_setting() {
        let r = request(json!({}), json!({"userId": "dev"}));
        assert_eq!(caller(&r, true).unwrap(), "dev");
        assert!(caller(&r, false)
            .unwrap_err()
            .contains("RowcastNegotiateAllowQueryUserId"));
        assert!(caller(&request(json!({}), json!({})), true)
            .unwrap_err()
            .contains("no caller identity"));
    }

    #[test]
    fn base64_principals_in_both_forms() {
        let app_service = json!({"auth_typ":"aad","claims":[
            {"typ":"name","val":"Ann"},
            {"typ":"http://schemas.microsoft.com/identity/claims/objectidentifier","val":"oid-7"}],
            "name_typ":"name","role_typ":"roles"});
        let encoded = base64::engine::general_purpose::STANDARD.encode(app_service.to_string());
        assert_eq!(principal_user(&encoded).as_deref(), Some("oid-7"));

        let swa = json!({"identityProvider":"github","userId":"gh-42","userDetails":"ann","userRoles":["authenticated"]});
        let encoded = base64::engine::general_purpose::STANDARD.encode(swa.to_string());
        assert_eq!(principal_user(&encoded).as_deref(), Some("gh-42"));
        assert_eq!(principal_user("not base64!"), None);
    }

    #[test]
    fn cors_origins() {
        let r = request(json!({"Origin": ["https://app.contoso.com"]}), json!({}));
        assert_eq!(
            cors_origin(&r, &["https://app.contoso.com".into()]).as_deref(),
            Some("https://app.contoso.com")
        );
        assert_eq!(cors_origin(&r, &["*".into()]).as_deref(), Some("*"));
        assert_eq!(cors_origin(&r, &["https://other".into()]), None);
        assert_eq!(cors_origin(&r, &[]), None);
    }
}
