//! What a client connection may do with groups: the roles in its access token, and the
//! permissions granted to it later over REST.

use std::collections::HashSet;

/// The two group permissions Web PubSub knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    SendToGroup,
    JoinLeaveGroup,
}

impl Permission {
    /// Parses the `{permission}` path segment of the permission operations.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sendToGroup" => Some(Permission::SendToGroup),
            "joinLeaveGroup" => Some(Permission::JoinLeaveGroup),
            _ => None,
        }
    }

    /// The role that grants this permission on every group, e.g. `webpubsub.sendToGroup`.
    fn role(self) -> &'static str {
        match self {
            Permission::SendToGroup => "webpubsub.sendToGroup",
            Permission::JoinLeaveGroup => "webpubsub.joinLeaveGroup",
        }
    }

    /// The prefix of wildcard roles, e.g. `webpubsub.sendToGroups.`.
    fn wildcard_prefix(self) -> &'static str {
        match self {
            Permission::SendToGroup => "webpubsub.sendToGroups.",
            Permission::JoinLeaveGroup => "webpubsub.joinLeaveGroups.",
        }
    }
}

/// A permission granted over REST, to one group or (without a target) to all of them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Grant {
    pub permission: Permission,
    pub group: Option<String>,
}

/// Everything one connection is allowed: its token's roles plus its grants.
#[derive(Debug, Default)]
pub struct Permissions {
    roles: Vec<String>,
    grants: HashSet<Grant>,
}

impl Permissions {
    pub fn new(roles: Vec<String>) -> Self {
        Permissions {
            roles,
            grants: HashSet::new(),
        }
    }

    pub fn grant(&mut self, grant: Grant) {
        self.grants.insert(grant);
    }

    /// Revoking without a target removes every grant of that permission, which is what a
    /// caller who never named a group means.
    pub fn revoke(&mut self, permission: Permission, group: Option<&str>) {
        match group {
            Some(group) => self
                .grants
                .retain(|g| !(g.permission == permission && g.group.as_deref() == Some(group))),
            None => self.grants.retain(|g| g.permission != permission),
        }
    }

    /// Whether `permission` holds on `group` (or, with no group, on all groups).
    pub fn allows(&self, permission: Permission, group: Option<&str>) -> bool {
        let by_grant = self.grants.iter().any(|grant| {
            grant.permission == permission
                && (grant.group.is_none() || grant.group.as_deref() == group)
        });
        by_grant
            || self
                .roles
                .iter()
                .any(|role| role_allows(role, permission, group))
    }
}

fn role_allows(role: &str, permission: Permission, group: Option<&str>) -> bool {
    if role == permission.role() {
        return true;
    }
    let Some(group) = group else {
        return false;
    };
    if let Some(named) = role
        .strip_prefix(permission.role())
        .and_then(|r| r.strip_prefix('.'))
    {
        return named == group;
    }
    role.strip_prefix(permission.wildcard_prefix())
        .is_some_and(|pattern| wildcard_matches(pattern.as_bytes(), group.as_bytes()))
}

/// Matches a group name against a wildcard role pattern: `*` is one dot-separated segment,
/// `**` may cross dots, `?` is one character other than a dot. Case-sensitive.
fn wildcard_matches(pattern: &[u8], name: &[u8]) -> bool {
    // Dynamic programming over (pattern, name) positions keeps this linear in space and
    // immune to pathological backtracking.
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    let mut p = 0;
    while p < pattern.len() {
        let mut next = vec![false; name.len() + 1];
        let (token_len, crosses_dots, any_length) = match pattern[p] {
            b'*' if pattern.get(p + 1) == Some(&b'*') => (2, true, true),
            b'*' => (1, false, true),
            b'?' => (1, false, false),
            _ => (1, false, false),
        };
        for start in 0..=name.len() {
            if !reachable[start] {
                continue;
            }
            if any_length {
                next[start] = true;
                for end in start..name.len() {
                    if !crosses_dots && name[end] == b'.' {
                        break;
                    }
                    next[end + 1] = true;
                }
            } else if start < name.len() {
                let fits = if pattern[p] == b'?' {
                    name[start] != b'.'
                } else {
                    name[start] == pattern[p]
                };
                if fits {
                    next[start + 1] = true;
                }
            }
        }
        reachable = next;
        p += token_len;
    }
    reachable[name.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_group_roles() {
        let all = Permissions::new(vec!["webpubsub.joinLeaveGroup".into()]);
        assert!(all.allows(Permission::JoinLeaveGroup, Some("any")));
        assert!(!all.allows(Permission::SendToGroup, Some("any")));

        let one = Permissions::new(vec!["webpubsub.sendToGroup.orders".into()]);
        assert!(one.allows(Permission::SendToGroup, Some("orders")));
        assert!(!one.allows(Permission::SendToGroup, Some("orders2")));
        assert!(!one.allows(Permission::SendToGroup, None));
    }

    #[test]
    fn wildcard_roles() {
        assert!(wildcard_matches(b"orders.*", b"orders.eu"));
        assert!(!wildcard_matches(b"orders.*", b"orders.eu.west"));
        assert!(wildcard_matches(b"orders.**", b"orders.eu.west"));
        assert!(wildcard_matches(b"room-?", b"room-1"));
        assert!(!wildcard_matches(b"room-?", b"room-."));
        assert!(!wildcard_matches(b"Room-?", b"room-1"));
        assert!(wildcard_matches(b"*", b""));
        let p = Permissions::new(vec!["webpubsub.joinLeaveGroups.chat.*".into()]);
        assert!(p.allows(Permission::JoinLeaveGroup, Some("chat.lobby")));
        assert!(!p.allows(Permission::JoinLeaveGroup, Some("news.lobby")));
    }

    #[test]
    fn grants_and_revokes() {
        let mut p = Permissions::new(Vec::new());
        assert!(!p.allows(Permission::JoinLeaveGroup, Some("g")));
        p.grant(Grant {
            permission: Permission::JoinLeaveGroup,
            group: Some("g".into()),
        });
        assert!(p.allows(Permission::JoinLeaveGroup, Some("g")));
        assert!(!p.allows(Permission::JoinLeaveGroup, Some("h")));
        p.revoke(Permission::JoinLeaveGroup, Some("g"));
        assert!(!p.allows(Permission::JoinLeaveGroup, Some("g")));
        p.grant(Grant {
            permission: Permission::SendToGroup,
            group: None,
        });
        assert!(p.allows(Permission::SendToGroup, Some("x")));
        p.revoke(Permission::SendToGroup, None);
        assert!(!p.allows(Permission::SendToGroup, Some("x")));
    }
}
