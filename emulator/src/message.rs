//! Messages on their way to subscribers, and how each subprotocol frames them.
//!
//! A send is framed once per subprotocol, not once per connection: fan-out to a thousand
//! subscribers clones a reference-counted frame a thousand times. Reliable connections add
//! their own `sequenceId`, so their frame is completed per connection from the shared JSON.

use std::sync::OnceLock;

use axum::extract::ws::{Message, Utf8Bytes};
use base64::Engine;
use bytes::Bytes;

use crate::error::ApiError;

/// The kind of data a message carries, which decides how subscribers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Json,
    Text,
    Binary,
}

impl DataType {
    /// Maps a REST `Content-Type` to a data type. No content type means binary, as in the
    /// service; parameters such as `charset` are ignored.
    pub fn from_content_type(content_type: Option<&str>) -> Result<Self, ApiError> {
        let Some(value) = content_type else {
            return Ok(DataType::Binary);
        };
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => Ok(DataType::Json),
            "text/plain" => Ok(DataType::Text),
            "application/octet-stream" | "" => Ok(DataType::Binary),
            _ => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "content type '{value}' is not supported; expected application/json, \
                     text/plain or application/octet-stream"
                ),
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Json => "json",
            DataType::Text => "text",
            DataType::Binary => "binary",
        }
    }

    /// Parses the `dataType` field of a client frame.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "json" => Some(DataType::Json),
            "text" => Some(DataType::Text),
            "binary" => Some(DataType::Binary),
            _ => None,
        }
    }
}

/// The body of a message exactly as its sender gave it.
#[derive(Debug, Clone)]
pub struct Payload {
    pub data_type: DataType,
    /// Raw bytes: JSON text, UTF-8 text, or arbitrary binary.
    pub data: Bytes,
}

impl Payload {
    /// Checks that the bytes fit the data type, so that JSON subscribers always get a valid
    /// frame.
    pub fn new(data_type: DataType, data: Bytes) -> Result<Self, ApiError> {
        match data_type {
            DataType::Json => {
                serde_json::from_slice::<serde::de::IgnoredAny>(&data).map_err(|err| {
                    ApiError::bad_request(format!("body is not valid JSON: {err}"))
                })?;
            }
            DataType::Text => {
                std::str::from_utf8(&data)
                    .map_err(|_| ApiError::bad_request("text/plain body is not valid UTF-8"))?;
            }
            DataType::Binary => {}
        }
        Ok(Payload { data_type, data })
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Who a message comes from, as JSON subscribers are told.
#[derive(Debug, Clone)]
pub enum Origin {
    /// A REST call.
    Server,
    /// A client's `sendToGroup`, or a REST send to a group.
    Group {
        group: String,
        from_user_id: Option<String>,
    },
}

/// One message, framed lazily for each subprotocol that needs it.
#[derive(Debug)]
pub struct Envelope {
    pub origin: Origin,
    pub payload: Payload,
    simple: OnceLock<Message>,
    json: OnceLock<Utf8Bytes>,
}

impl Envelope {
    pub fn new(origin: Origin, payload: Payload) -> Self {
        Envelope {
            origin,
            payload,
            simple: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The frame a client without a subprotocol receives: the data as it is, text frames for
    /// JSON and text, binary frames for binary.
    pub fn simple_frame(&self) -> Message {
        self.simple
            .get_or_init(|| match self.payload.data_type {
                DataType::Binary => Message::Binary(self.payload.data.clone()),
                DataType::Json | DataType::Text => {
                    // Payload::new checked the bytes are UTF-8.
                    let text = String::from_utf8_lossy(&self.payload.data).into_owned();
                    Message::Text(Utf8Bytes::from(text))
                }
            })
            .clone()
    }

    /// The `json.webpubsub.azure.v1` frame.
    pub fn json_frame(&self) -> Message {
        Message::Text(self.json_text().clone())
    }

    /// The `json.reliable.webpubsub.azure.v1` frame, which carries the connection's
    /// sequence id in front of the shared fields.
    pub fn reliable_frame(&self, sequence_id: u64) -> String {
        let json = self.json_text().as_str();
        format!("{{\"sequenceId\":{sequence_id},{}", &json[1..])
    }

    fn json_text(&self) -> &Utf8Bytes {
        self.json.get_or_init(|| {
            let mut out = String::with_capacity(self.payload.len() + 96);
            out.push_str("{\"type\":\"message\",");
            match &self.origin {
                Origin::Server => out.push_str("\"from\":\"server\","),
                Origin::Group {
                    group,
                    from_user_id,
                } => {
                    out.push_str("\"from\":\"group\",\"group\":");
                    out.push_str(&quote(group));
                    out.push(',');
                    if let Some(user) = from_user_id {
                        out.push_str("\"fromUserId\":");
                        out.push_str(&quote(user));
                        out.push(',');
                    }
                }
            }
            out.push_str("\"dataType\":\"");
            out.push_str(self.payload.data_type.as_str());
            out.push_str("\",\"data\":");
            match self.payload.data_type {
                DataType::Json => out.push_str(&String::from_utf8_lossy(&self.payload.data)),
                DataType::Text => {
                    out.push_str(&quote(&String::from_utf8_lossy(&self.payload.data)))
                }
                DataType::Binary => {
                    out.push('"');
                    out.push_str(
                        &base64::engine::general_purpose::STANDARD.encode(&self.payload.data),
                    );
                    out.push('"');
                }
            }
            out.push('}');
            Utf8Bytes::from(out)
        })
    }
}

fn quote(text: &str) -> String {
    serde_json::Value::String(text.to_owned()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(message: Message) -> String {
        match message {
            Message::Text(text) => text.to_string(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    #[test]
    fn content_types_map_to_data_types() {
        assert_eq!(DataType::from_content_type(None).unwrap(), DataType::Binary);
        assert_eq!(
            DataType::from_content_type(Some("application/json; charset=utf-8")).unwrap(),
            DataType::Json
        );
        assert_eq!(
            DataType::from_content_type(Some("Text/Plain")).unwrap(),
            DataType::Text
        );
        let err = DataType::from_content_type(Some("image/png")).unwrap_err();
        assert_eq!(err.status, axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(err.message.contains("image/png"));
    }

    #[test]
    fn json_frames_embed_each_data_type() {
        let json = Envelope::new(
            Origin::Server,
            Payload::new(DataType::Json, Bytes::from_static(b"{\"a\":1}")).unwrap(),
        );
        let frame: serde_json::Value = serde_json::from_str(&text_of(json.json_frame())).unwrap();
        assert_eq!(frame["dataType"], "json");
        assert_eq!(frame["data"]["a"], 1);

        let binary = Envelope::new(
            Origin::Group {
                group: "g\"1".into(),
                from_user_id: Some("u".into()),
            },
            Payload::new(DataType::Binary, Bytes::from_static(&[0, 255])).unwrap(),
        );
        let frame: serde_json::Value = serde_json::from_str(&text_of(binary.json_frame())).unwrap();
        assert_eq!(frame["from"], "group");
        assert_eq!(frame["group"], "g\"1");
        assert_eq!(frame["fromUserId"], "u");
        assert_eq!(frame["data"], "AP8=");

        let reliable: serde_json::Value = serde_json::from_str(&binary.reliable_frame(7)).unwrap();
        assert_eq!(reliable["sequenceId"], 7);
        assert_eq!(reliable["data"], "AP8=");
    }

    #[test]
    fn invalid_json_and_text_bodies_are_refused() {
        assert!(Payload::new(DataType::Json, Bytes::from_static(b"{nope")).is_err());
        assert!(Payload::new(DataType::Text, Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert!(Payload::new(DataType::Binary, Bytes::from_static(&[0xff])).is_ok());
    }
}
