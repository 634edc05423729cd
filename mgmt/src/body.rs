//! Reading request bodies and query strings the way EMQ's API reports problems: not JSON → 109, a
//! required field missing → 107, a field of the wrong JSON type → 108, bad paging numbers → 108.

use serde_json::{Map, Value};

use crate::error::{code, ApiError};
use midge_shared::control::PageRequest;

/// A parsed JSON object body.
pub struct Body(Map<String, Value>);

impl Body {
    pub fn parse(text: &str) -> Result<Body, ApiError> {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(Body(map)),
            Ok(_) => Err(ApiError::new(code::WRONG_TYPE, "body must be a JSON object")),
            Err(_) => Err(ApiError::new(code::NOT_JSON, "body is not JSON")),
        }
    }

    pub fn map(&self) -> &Map<String, Value> {
        &self.0
    }

    fn field(&self, name: &str) -> Result<&Value, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => {
                Err(ApiError::new(code::MISSING_PARAMETER, format!("missing parameter {name}")))
            }
            Some(v) => Ok(v),
        }
    }

    fn wrong_type(name: &str, expected: &str) -> ApiError {
        ApiError::new(code::WRONG_TYPE, format!("parameter {name} must be {expected}"))
    }

    pub fn string(&self, name: &str) -> Result<String, ApiError> {
        self.field(name)?.as_str().map(str::to_string).ok_or_else(|| Self::wrong_type(name, "a string"))
    }

    pub fn opt_string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.string(name).map(Some),
        }
    }

    pub fn bool(&self, name: &str) -> Result<bool, ApiError> {
        self.field(name)?.as_bool().ok_or_else(|| Self::wrong_type(name, "true or false"))
    }

    pub fn opt_bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.bool(name).map(Some),
        }
    }

    /// A QoS: the integer 0, 1 or 2 (108 otherwise).
    pub fn opt_qos(&self, name: &str) -> Result<Option<u8>, ApiError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(q @ 0..=2) => Ok(Some(q as u8)),
                _ => Err(Self::wrong_type(name, "0, 1 or 2")),
            },
        }
    }
}

/// `curr_page` (default 1) and `page_size` (default 20), positive integers.
pub fn paging(curr_page: Option<&str>, page_size: Option<&str>) -> Result<PageRequest, ApiError> {
    let number = |name: &str, value: Option<&str>, default: u64| match value {
        None => Ok(default),
        Some(text) => match text.parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ApiError::new(code::WRONG_TYPE, format!("{name} must be a positive integer"))),
        },
    };
    Ok(PageRequest { page: number("curr_page", curr_page, 1)?, size: number("page_size", page_size, 20)? })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Body::parse("nope").err().unwrap().code, 109);
        assert_eq!(Body::parse("[1]").err().unwrap().code, 108);
        let body = Body::parse(r#"{"a":"x","n":5,"q":3}"#).unwrap();
        assert_eq!(body.string("a").unwrap(), "x");
        assert_eq!(body.string("missing").err().unwrap().code, 107);
        assert_eq!(body.string("n").err().unwrap().code, 108);
        assert_eq!(body.opt_qos("q").err().unwrap().code, 108);
        assert_eq!(body.opt_string("missing").unwrap(), None);
        assert_eq!(paging(None, None).unwrap(), PageRequest { page: 1, size: 20 });
        assert_eq!(paging(Some("0"), None).err().unwrap().code, 108);
        assert_eq!(paging(Some("2"), Some("x")).err().unwrap().code, 108);
    }
}
