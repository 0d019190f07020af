//! Room names (contract section 4) and the default rooms of each category (section 2).
//!
//! A [`Room`] can only be built through [`Room::parse`] or [`Room::customer`], so every room the
//! daemon joins, emits to or stores history for has passed the grammar.

use std::fmt;
use std::sync::Arc;

/// A validated room name: `customer:<id>` or `cms:<name>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Room(Arc<str>);

/// The name did not match the room grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid_room")]
pub struct InvalidRoom;

const CUSTOMER_PREFIX: &str = "customer:";
const CMS_PREFIX: &str = "cms:";

/// `[A-Za-z0-9_-]{1,max}`, the shape shared by customer ids and categories.
pub fn is_token(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_cms_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl Room {
    pub fn parse(name: &str) -> Result<Self, InvalidRoom> {
        let valid = if let Some(id) = name.strip_prefix(CUSTOMER_PREFIX) {
            is_token(id, 64)
        } else if let Some(cms) = name.strip_prefix(CMS_PREFIX) {
            is_cms_name(cms)
        } else {
            false
        };
        if valid {
            Ok(Room(name.into()))
        } else {
            Err(InvalidRoom)
        }
    }

    /// The room of one customer: `customer:<id>`.
    pub fn customer(id: &str) -> Result<Self, InvalidRoom> {
        if is_token(id, 64) {
            Ok(Room(format!("{CUSTOMER_PREFIX}{id}").into()))
        } else {
            Err(InvalidRoom)
        }
    }

    /// The customer id of a `customer:<id>` room.
    pub fn customer_id(&self) -> Option<&str> {
        self.0.strip_prefix(CUSTOMER_PREFIX)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room({})", self.0)
    }
}

/// The CMS rooms every notification of `category` goes to (contract section 2).
pub fn default_rooms(category: &str) -> &'static [&'static str] {
    match category {
        "station" => &["cms:dashboard", "cms:stations"],
        "charger" => &["cms:dashboard", "cms:points"],
        "session" => &["cms:dashboard", "cms:sessions"],
        _ => &["cms:dashboard"],
    }
}

/// Categories with a label of their own in metrics; anything else is counted as `other` so
/// that producers cannot grow the metric cardinality without bound.
pub fn metric_category(category: &str) -> &'static str {
    match category {
        "station" => "station",
        "charger" => "charger",
        "session" => "session",
        "customer" => "customer",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customer_rooms_accept_the_id_grammar() {
        for ok in [
            "customer:123",
            "customer:a-B_9",
            &format!("customer:{}", "x".repeat(64)),
        ] {
            assert!(Room::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "customer:",
            "customer:a b",
            "customer:é",
            &format!("customer:{}", "x".repeat(65)),
        ] {
            assert_eq!(Room::parse(bad), Err(InvalidRoom), "{bad}");
        }
    }

    #[test]
    fn cms_rooms_are_lowercase_and_short() {
        assert!(Room::parse("cms:dashboard").is_ok());
        assert!(Room::parse("cms:a_b-9").is_ok());
        for bad in [
            "cms:",
            "cms:Dashboard",
            "cms:a:b",
            &format!("cms:{}", "x".repeat(33)),
        ] {
            assert_eq!(Room::parse(bad), Err(InvalidRoom), "{bad}");
        }
    }

    #[test]
    fn other_prefixes_are_invalid() {
        for bad in ["", "admin:x", "Customer:1", "customer123", " customer:1"] {
            assert_eq!(Room::parse(bad), Err(InvalidRoom), "{bad:?}");
        }
    }

    #[test]
    fn customer_builds_the_room_and_gives_the_id_back() {
        let room = Room::customer("456").unwrap();
        assert_eq!(room.as_str(), "customer:456");
        assert_eq!(room.customer_id(), Some("456"));
        assert_eq!(Room::customer("1.5"), Err(InvalidRoom));
    }

    #[test]
    fn default_rooms_follow_the_contract_table() {
        assert_eq!(default_rooms("station"), ["cms:dashboard", "cms:stations"]);
        assert_eq!(default_rooms("charger"), ["cms:dashboard", "cms:points"]);
        assert_eq!(default_rooms("session"), ["cms:dashboard", "cms:sessions"]);
        assert_eq!(default_rooms("customer"), ["cms:dashboard"]);
        assert_eq!(default_rooms("billing"), ["cms:dashboard"]);
    }
}
