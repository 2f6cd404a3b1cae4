use std::fmt;
use std::sync::Arc;

/// The key of an item, for per-key limits ([`TaskBuilder::key`](crate::TaskBuilder::key)).
///
/// A host, a tenant, a model: any string or number. Cheap to clone (a number, or a reference
/// count on a shared string), and ordered numbers first, then strings.
///
/// # Examples
///
/// ```
/// use task_limiter::Key;
///
/// let host = Key::from("example.com");
/// assert_eq!(host, Key::from(String::from("example.com")));
/// assert_eq!(host.to_string(), "example.com");
/// assert_eq!(Key::from(7_u64).to_string(), "7");
/// assert!(Key::from(7_u64) < host);
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Repr);

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Repr {
    Number(u64),
    Text(Arc<str>),
}

impl From<u64> for Key {
    fn from(n: u64) -> Key {
        Key(Repr::Number(n))
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key(Repr::Text(s.into()))
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key(Repr::Text(s.into()))
    }
}

impl From<Arc<str>> for Key {
    fn from(s: Arc<str>) -> Key {
        Key(Repr::Text(s))
    }
}

impl From<&Key> for Key {
    fn from(key: &Key) -> Key {
        key.clone()
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Number(n) => fmt::Display::fmt(n, f),
            Repr::Text(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Number(n) => write!(f, "Key({n})"),
            Repr::Text(s) => write!(f, "Key({s:?})"),
        }
    }
}
